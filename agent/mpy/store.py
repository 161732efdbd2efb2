"""What the board remembers on its filesystem (littlefs on an ESP32): the journey's journal,
the status sequence, the last job and rollbacks, and what each slot holds with the
anti-rollback floor. Every file is replaced atomically: written to NAME.tmp, then renamed over
NAME (littlefs and POSIX rename are atomic; FAT's is not, so the board's data partition must be
littlefs, MicroPython's default on ESP32).

Invariant: after a power cut at any moment each file holds its old or its new record; the
status sequence number is saved before a status carrying it is published.
"""

import json
import os

MAX_ROLLBACKS = 10


def write_atomic(path, record):
    """`record` as JSON in NAME.tmp, renamed over NAME. json.dump writes it in pieces: the
    whole text at once (a journal after a trial, about 1 KB) wanted a free run that long when
    the heap is fullest, at the commit."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.rename(tmp, path)


def read_json(path):
    """The record in `path` (None if there is none). json.load reads the file as a stream:
    the whole text at once (a journal after a trial, about 1 KB) wanted a free run that
    long when the journey is read back into a split heap."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        if e.args and e.args[0] == 2:  # ENOENT: nothing saved yet
            return None
        raise


class Journal:
    """The journey record; `after_save(n)` is a hook for power-cut tests (n-th save)."""

    def __init__(self, path, after_save=None):
        self.path = path
        self.after_save = after_save
        self.saves = 0
        self.problem = None

    def save(self, journey):
        self.save_record(journey.to_record(), journey.state)

    def save_record(self, record, state):
        """A journey's record taken earlier (agent/mpy/heapreset.py hold)."""
        write_atomic(self.path, record)
        self.saves += 1
        if self.after_save is not None:
            self.after_save(self.saves, state)

    def load(self, policy):
        # Imported here, not at the top: the journey's modules leave the heap while a step
        # runs parked (agent/mpy/park.py), and a name bound here would keep them.
        from agent.core.jobs import JobMemory
        from agent.core.journey import Journey

        self.problem = None
        try:
            record = read_json(self.path)
            if record is None:
                return Journey(JobMemory(), policy)
            return Journey.from_record(record, policy)
        except MemoryError:  # the heap, not the record: the journal stays as it is
            raise
        except Exception as e:  # corrupt, truncated, unknown: never guessed at
            aside = self.path + ".corrupt"
            try:
                os.rename(self.path, aside)
            except OSError:
                pass
            self.problem = "unusable journal (%s); moved to %s, starting idle" % (e, aside)
            return Journey(JobMemory(), policy)


class Board:
    """history.json (seq, last_job, rollbacks) and slots.json (versions, floor) in one place."""

    def __init__(self, state_dir):
        self.history_path = state_dir + "/history.json"
        self.slots_path = state_dir + "/slots.json"

    def _load(self, path, default):
        try:
            data = read_json(path)
        except ValueError:
            os.rename(path, path + ".corrupt")
            data = None
        return data if isinstance(data, dict) else default

    def history(self):
        return self._load(self.history_path, {"seq": 0, "last_job": None, "rollbacks": []})

    def next_seq(self):
        data = self.history()
        data["seq"] = data.get("seq", 0) + 1
        write_atomic(self.history_path, data)
        return data["seq"]

    def record_result(self, job_id, status, info, message=None):
        data = self.history()
        data["final"] = message
        row = {"id": job_id, "version": info.get("version"), "result": status,
               "reason": info.get("reason"), "check": info.get("check"),
               "cause": info.get("cause")}  # fmt: skip
        data["last_job"] = row
        if status == "RolledBack":
            data["rollbacks"] = (data.get("rollbacks", []) + [row])[-MAX_ROLLBACKS:]
        write_atomic(self.history_path, data)

    def final_delivered(self):
        data = self.history()
        if data.get("final") is not None:
            data["final"] = None
            write_atomic(self.history_path, data)

    def slots(self):
        data = self._load(self.slots_path, {"slots": {}, "security_version": 0})
        if "slots" not in data:
            data["slots"] = {}
        return data

    def _save_slots(self, data):
        write_atomic(self.slots_path, data)

    def set_slot(self, name, record):
        data = self.slots()
        data["slots"][name] = record
        self._save_slots(data)

    def armed(self, name, count=1):
        """The slot is handed to the bootloader for one more boot attempt of this install
        (set_slot() at the install starts the count again); count -1 takes back one that
        set_boot() refused."""
        data = self.slots()
        record = data["slots"].setdefault(name, {})
        record["armed"] = max(0, record.get("armed", 0) + count)
        self._save_slots(data)

    def mark(self, name, state):
        data = self.slots()
        data["slots"].setdefault(name, {})["state"] = state
        self._save_slots(data)

    def committed(self, name):
        """The slot passed its trial: its security version becomes the anti-rollback floor."""
        data = self.slots()
        record = data["slots"].setdefault(name, {})
        record["state"] = "good"
        floor = max(data.get("security_version", 0), record.get("security_version", 0))
        data["security_version"] = floor
        self._save_slots(data)

    def floor(self):
        return self.slots().get("security_version", 0)
