"""A fake daemon and a simulated A/B board for the journey's trace scenarios.

The board behaves like the boot contract: try_slot gives a slot a few attempts, firmware that
crashes on boot burns them and the board falls back to the primary slot. A power cut is "the
agent stops between two actions"; the board then boots and a new journey is built from the
last journal record, as the daemon does after any restart. The rig also enforces the
journey's invariants after every action: no broken slot is ever bootable, the journal is
current before every board-changing action, and each call returns the state it moved to.

Imports only agent.core and json, so it runs under MicroPython too.
"""

import json

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import Journey
from agent.core.trial import TrialPolicy

T0 = 1767225600  # 2026-01-01T00:00:00Z, a Thursday
DEVICE = {"model": "acme-ac22"}
ATTEMPTS = 3


class PowerCut(Exception):
    pass


class Board:
    def __init__(self):
        self.slots = {"A": "1.0", "B": "0.9"}
        self.good = {"A": True, "B": True}
        self.primary = "A"
        self.trying = None
        self.left = 0
        self.booted = "A"
        self.boots = 0
        self.mcu = "A"  # whose release the MCUs run (slot A's at the factory)

    def other(self, slot):
        return "B" if slot == "A" else "A"

    def try_slot(self, slot):
        self.trying, self.left = slot, ATTEMPTS

    def mark_good(self, slot):
        self.good[slot] = True
        self.primary = slot
        if self.trying == slot:
            self.trying = None

    def mark_bad(self, slot):
        self.good[slot] = False
        if self.trying == slot:
            self.trying = None
        if self.primary == slot:
            self.primary = self.other(slot)

    def check_no_broken_slot_bootable(self):
        for slot in ("A", "B"):
            bootable = self.good[slot] or self.trying == slot
            if bootable and self.slots[slot] in ("partial", "corrupt"):
                raise AssertionError(
                    "slot %s is bootable but holds a %s image" % (slot, self.slots[slot])
                )

    def boot(self, crashing_versions):
        """The slot the agent comes up in; crashing firmware burns the attempts first."""
        for _ in range(ATTEMPTS + 2):
            self.boots += 1
            if self.trying is not None and self.left > 0:
                self.left -= 1
                slot = self.trying
            else:
                self.trying = None
                slot = self.primary
            self.booted = slot
            if self.slots[slot] not in crashing_versions:
                return slot
        raise AssertionError("board never came up")


class Rig:
    """A fake daemon: executes actions in order, feeds back results, jumps the clock."""

    def __init__(self, **kw):
        self.now = kw.get("now", T0)
        self.offset = kw.get("offset", 0)
        self.download = list(kw.get("download", ["ok"]))
        self.signature = kw.get("signature", "ok")
        self.install = list(kw.get("install", ["ok"]))
        # version -> good | crash | comm | session | hang | broker-down
        self.firmware = kw.get("firmware", {})
        self.session = kw.get("session")  # function now -> bool
        self.cut_at = kw.get("cut_at")
        self.broker_down_s = kw.get("broker_down_s", 0)  # firmware "broker-down"
        self.board = Board()
        self.journal = None
        self.statuses = []
        self.reports = []
        self.done = []  # action names in execution order
        self.restarts = 0
        self.policy = TrialPolicy(600, ["alarms", "charging-session", "communication"])
        self.journey = Journey(JobMemory(), self.policy)
        self.states = list(self.journey.trace)
        self.queue = []

    # --- driving ---------------------------------------------------------------------------

    def deliver(self, doc):
        self.last_doc = doc
        job = parse_job(json.dumps(doc).encode(), DEVICE)
        slot = self.board.booted
        result = self.journey.offer(job, self.now, slot, self.board.other(slot), 0.5)
        self._take(result)
        return result[1]

    def run(self, max_steps=400):
        for _ in range(max_steps):
            if not self.queue:
                if self.journey.state == lc.IDLE or lc.is_terminal(self.journey.state):
                    return self
                active = bool(self.session and self.session(self.now))
                self._take(self.journey.tick(self.now, self.offset, active))
                continue
            action = self.queue.pop(0)
            try:
                self._execute(action)
            except PowerCut:
                self.power_cycle()
        raise AssertionError("journey did not settle: state %s" % self.journey.state)

    def power_cycle(self):
        """The agent stops here; the board boots; the daemon resumes from the journal."""
        self.queue = []
        self.restarts += 1
        self.board.check_no_broken_slot_bootable()
        crashing = [v for v in self.firmware if self.firmware[v] == "crash"]
        booted = self.board.boot(crashing)
        record = json.loads(self.journal) if self.journal else None
        if record is None:
            # Nothing was saved, so the job was never acknowledged: the broker redelivers it.
            self.journey = Journey(JobMemory(), self.policy)
            self.states.append(lc.IDLE)
            self._seen = 1
            self.deliver(self.last_doc)
            return
        self.journey = Journey.from_record(record, self.policy)
        self._seen = 1
        self._take(self.journey.resume(booted, self.now))

    def _take(self, result):
        """Record the (state, actions) a journey call returned and queue the actions."""
        state, actions = result
        if state != self.journey.state:
            raise AssertionError(
                "call returned state %s, journey is in %s" % (state, self.journey.state)
            )
        trace = self.journey.trace
        start = getattr(self, "_seen", 1)
        for state in trace[start:]:
            self.states.append(state)
        self._seen = len(trace)
        self.queue.extend(actions)

    def _feed(self, event, info=None):
        self._take(self.journey.handle(event, self.now, info))

    # --- the actions -----------------------------------------------------------------------

    def _execute(self, action):
        name = action[0]
        if self.cut_at is not None and len(self.done) + 1 == self.cut_at:
            self.cut_at = None
            self.done.append("CUT:" + name)
            if name == "install":  # the cut lands halfway through writing the slot
                self.board.slots[action[1]] = "partial"
            raise PowerCut()
        self.done.append(name)
        self.board.check_no_broken_slot_bootable()
        if name in ("install", "try_slot", "mark_bad", "reboot"):
            self._check_journal_is_current(name)
        if name == "save_journal":
            self.journal = json.dumps(self.journey.to_record())
        elif name == "report":
            self.statuses.append(action[1])
            self.reports.append(action)
        elif name == "wait":
            self.now = max(self.now + 1, action[1])
            if self.journey.state == lc.TRIAL:  # the daemon keeps the checks running
                self.queue.append(("run_checks",))
        elif name in ("try_slot", "mark_good", "mark_bad"):
            getattr(self.board, name)(action[1])
        elif name == "reboot":
            raise PowerCut()
        elif name == "record_baseline":
            self.journey.set_baseline({"codes": [], "rate_per_hour": 0.0})
        else:
            self._execute_step(action)

    def _check_journal_is_current(self, name):
        # The journal records the state before every step that changes the board. try_slot
        # runs while the journal still says INSTALLED, whose resume settles by booted slot
        # (mark_good likewise under TRIAL, and is not checked here): see journey.py.
        saved = json.loads(self.journal)["state"] if self.journal else None
        expected = lc.INSTALLED if name == "try_slot" else self.journey.state
        if saved != expected:
            raise AssertionError(
                "%s in state %s, journal says %s" % (name, self.journey.state, saved)
            )

    def _execute_step(self, action):
        name = action[0]
        if name == "download":
            outcome = self.download.pop(0) if len(self.download) > 1 else self.download[0]
            if outcome == "ok":
                self._feed(lc.DOWNLOAD_OK)
            else:
                self._feed(lc.DOWNLOAD_ERROR, {"reason": "network", "transient": True})
        elif name == "verify":
            ok = self.signature == "ok"
            self._feed(lc.SIGNATURE_OK if ok else lc.SIGNATURE_BAD, {"reason": "bad-signature"})
        elif name == "install":
            outcome = self.install.pop(0) if len(self.install) > 1 else self.install[0]
            if outcome == "ok":
                self.board.slots[action[1]] = self.journey.job.version
                self._feed(lc.INSTALL_OK)
            elif outcome == "readback":
                self.board.slots[action[1]] = "corrupt"
                self._feed(lc.VERIFY_ERROR, {"reason": "readback-mismatch"})
            else:
                self.board.slots[action[1]] = "partial"
                self._feed(lc.INSTALL_ERROR, {"reason": "no-space"})
        elif name == "run_checks":
            self._take(self.journey.check_results(self._results(), self.now))
        elif name in ("flash_components", "restore_components"):
            self.board.mcu = action[1]
        elif name not in ("cleanup", "confirm_components"):
            raise AssertionError("unknown action %r" % (action,))

    def _results(self):
        kind = self.firmware.get(self.board.slots[self.board.booted], "good")
        if kind == "hang":
            return {}
        broker_back = self.journey.data.get("trial_started_at", 0) + self.broker_down_s
        results = {}
        for name in ("alarms", "charging-session", "communication"):
            results[name] = (True, "ok")
        if kind == "comm":
            results["communication"] = (False, "CSMS rejected BootNotification")
        if kind == "broker-down" and self.now < broker_back:
            results["communication"] = (None, "MQTT broker unreachable")
        if kind == "session":
            results["charging-session"] = (False, "EV session delivered 0 Wh")
        return results


def job(job_id="job-1", version="2.0", **extra):
    doc = {"id": job_id, "url": "https://fw.example/acme-2.0.bundle", "version": version}
    for key in extra:
        doc[key] = extra[key]
    return doc


def check_equal(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s:\n  expected %r\n  actual   %r" % (what, expected, actual))


def check_board(rig, booted, primary, good_b):
    check_equal(
        (rig.board.booted, rig.board.primary, rig.board.good["B"]),
        (booted, primary, good_b),
        "board (booted, primary, slot B good)",
    )
    # Components move with the slot: the MCUs run the release of the slot that runs.
    check_equal(rig.board.mcu, booted, "release the MCUs run")
