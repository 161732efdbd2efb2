"""What the operator's update matrix needs to remember across reboots: the status sequence
number, the last job and its result, and the rollback history (bounded).

Invariant: the sequence number never repeats, even across power cuts (it is saved before a
status carrying it is published), so a backend can order and de-duplicate statuses.
"""

import logging
import os
import threading
import time

from agent.state import statedir
from agent.state.atomic import read_json, write_json_atomic

log = logging.getLogger("charger-update")

FILE = "history.json"
MAX_ROLLBACKS = 20


class History:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE)
        # Statuses come from the loop, the workers and the MQTT thread: one at a time here.
        self.lock = threading.RLock()

    def _load(self):
        try:
            data = read_json(self.path, default=None) or {}
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError):
            # Unreadable: keep it for an engineer, start again. The sequence restarts from
            # the clock (ms) so it still never repeats a number the backend has seen.
            try:
                os.replace(self.path, self.path + ".corrupt")
                log.error("history %s was unreadable; moved aside", self.path)
            except OSError as e:
                log.error("history %s is unreadable and stays (%s)", self.path, e)
            data = {"seq": int(time.time() * 1000)}
        data.setdefault("seq", 0)
        data.setdefault("last_job", None)
        data.setdefault("rollbacks", [])
        return data

    def _save(self, data):
        statedir.ensure(self.state_dir)
        write_json_atomic(self.path, data)

    def next_seq(self):
        with self.lock:
            data = self._load()
            data["seq"] += 1
            self._save(data)
            return data["seq"]

    def record_result(self, job_id, status, info):
        with self.lock:
            self._record_result(job_id, status, info)

    def _record_result(self, job_id, status, info):
        data = self._load()
        data["last_job"] = {
            "id": job_id, "version": info.get("version"), "result": status,
            "reason": info.get("reason"), "check": info.get("check"), "cause": info.get("cause"),
        }  # fmt: skip
        if status == "RolledBack":
            data["rollbacks"] = (data["rollbacks"] + [dict(data["last_job"])])[-MAX_ROLLBACKS:]
        self._save(data)

    def last_job(self):
        return self._load()["last_job"]

    def rollbacks(self):
        return self._load()["rollbacks"]
