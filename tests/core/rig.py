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
from agent.core.jobs import JobMemory, job_from_request, parse_job
from agent.core.journey import Journey
from agent.core.trial import TrialPolicy

T0 = 1767225600  # 2026-01-01T00:00:00Z, a Thursday
DEVICE = {"model": "acme-ac22"}
ATTEMPTS = 3


class PowerCut(Exception):
    """The board went down; `reset` is the cause the next boot will report."""

    def __init__(self, reset="power-on"):
        super().__init__(reset)
        self.reset = reset


class Board:
    def __init__(self):
        self.slots = {"A": "1.0", "B": "0.9"}
        self.good = {"A": True, "B": True}
        self.primary = "A"
        self.trying = None
        self.left = 0
        self.booted = "A"
        self.boots = 0
        self.last_reset = "power-on"  # the cause the running boot reports
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

    def left_of(self, slot):
        """Boot attempts the bootloader still gives `slot` (the contract's attempts_left)."""
        if self.trying == slot:
            return self.left
        return ATTEMPTS if self.good[slot] else 0

    def lose_env(self):
        """A torn single-copy env: the bootloader comes back with its defaults (A first,
        every slot with full attempts), the trial forgotten."""
        self.trying, self.primary = None, "A"
        self.good = {"A": True, "B": True}

    def check_no_broken_slot_bootable(self):
        for slot in ("A", "B"):
            bootable = self.good[slot] or self.trying == slot
            if bootable and self.slots[slot] in ("partial", "corrupt"):
                raise AssertionError(
                    "slot %s is bootable but holds a %s image" % (slot, self.slots[slot])
                )

    def boot(self, crashing_versions, reset="power-on"):
        """The slot the agent comes up in; crashing firmware burns the attempts first (each
        crash is a panic reset, which the next boot reports)."""
        self.last_reset = reset
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
            self.last_reset = "panic"
        raise AssertionError("board never came up")


class Rig:
    """A fake daemon: executes actions in order, feeds back results, jumps the clock."""

    def __init__(self, **kw):
        self.now = kw.get("now", T0)
        self.offset = kw.get("offset", 0)
        self.download = list(kw.get("download", ["ok"]))
        self.signature = kw.get("signature", "ok")
        self.install = list(kw.get("install", ["ok"]))
        # version -> good | crash | comm | session | hang | broker-down | watchdog
        self.firmware = kw.get("firmware", {})
        self.session = kw.get("session")  # function now -> bool
        self.cut_at = kw.get("cut_at")
        self.cuts = list(kw.get("cuts", ()))  # more cut points (1-based action numbers)
        self.cut_on = list(kw.get("cut_on", ("", 0)))  # (action name, how many of them to cut)
        self.cut_reset = kw.get("cut_reset", "power-on")
        self.lose_env_at = kw.get(
            "lose_env_at"
        )  # action number whose cut tears the env  # what a cut looks like at next boot
        self.reset_known = kw.get("reset_known", True)  # False: the board cannot tell causes
        self.boot_facts = kw.get("boot_facts", True)  # False: resume without any facts
        self.broker_down_s = kw.get("broker_down_s", 0)  # firmware "broker-down"
        self.board = Board()
        self.journal = None
        self.statuses = []
        self.reports = []
        self.done = []  # action names in execution order
        self.restarts = 0
        self.sessions_blocked = False  # block_sessions / release_sessions (front-end jobs)
        self.policy = TrialPolicy(600, ["alarms", "charging-session", "communication"])
        self.journey = Journey(JobMemory(), self.policy)
        self.states = list(self.journey.trace)
        self.queue = []

    # --- driving ---------------------------------------------------------------------------

    def deliver(self, doc, replace=False):
        """An MQTT job; a front-end request (engine options allowed) when `replace` is set
        or the doc carries them, offered with supersede() when `replace`."""
        self.last_doc = doc
        extended = replace or _extended(doc)
        if extended:
            job = job_from_request(doc, DEVICE)
        else:
            job = parse_job(json.dumps(doc).encode(), DEVICE)
        slot = self.board.booted
        offer = self.journey.supersede if replace else self.journey.offer
        result = offer(job, self.now, slot, self.board.other(slot), 0.5)
        self._take(result)
        return result[1]

    def _reached(self, until):
        if callable(until):
            return until(self)
        return bool(self.journal) and json.loads(self.journal)["state"] == until

    def run(self, max_steps=400, until=None):
        """Execute until the journey settles, or until `until` holds before a step: a
        callable until(rig), or a state name the journal must hold."""
        for _ in range(max_steps):
            if until is not None and self._reached(until):
                return self
            if not self.queue:
                if self.journey.state == lc.IDLE or lc.is_terminal(self.journey.state):
                    return self
                active = bool(self.session and self.session(self.now))
                self._take(self.journey.tick(self.now, self.offset, active))
                continue
            action = self.queue.pop(0)
            try:
                self._execute(action)
            except PowerCut as cut:
                self.power_cycle(cut.reset)
        raise AssertionError("journey did not settle: state %s" % self.journey.state)

    def power_cycle(self, reset="power-on"):
        """The agent stops here; the board boots; the daemon resumes from the journal."""
        self.queue = []
        self.restarts += 1
        self.board.check_no_broken_slot_bootable()
        crashing = [v for v in self.firmware if self.firmware[v] == "crash"]
        booted = self.board.boot(crashing, reset)
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
        self._take(self.journey.resume(booted, self.now, self.facts()))

    def facts(self):
        """What the platform tells the agent about this boot (agent/core/resets.py)."""
        if not self.boot_facts:
            return None
        reset = self.board.last_reset if self.reset_known else "unknown"
        facts = {"reset": reset, "id": "boot-%d" % self.board.boots}
        new = self.journey.data.get("new_slot")
        if new:
            facts["attempts_left"] = self.board.left_of(new)
        return facts

    def agent_restart(self):
        """The agent process dies and is restarted within the same boot."""
        self.queue = []
        record = json.loads(self.journal)
        self.journey = Journey.from_record(record, self.policy)
        self._seen = 1
        self._take(self.journey.resume(self.board.booted, self.now, self.facts()))

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
        number = len(self.done) + 1
        cut_here = name == self.cut_on[0] and self.cut_on[1] > 0
        if cut_here:
            self.cut_on[1] -= 1
        if cut_here or number == self.cut_at or number in self.cuts:
            self.cut_at = None if number == self.cut_at else self.cut_at
            self.done.append("CUT:" + name)
            if number == self.lose_env_at:
                self.board.lose_env()
            if name == "install":  # the cut lands halfway through writing the slot
                self.board.slots[action[1]] = "partial"
            raise PowerCut(self.cut_reset)
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
            raise PowerCut("reboot")
        elif name == "record_baseline":
            self.journey.set_baseline({"codes": [], "rate_per_hour": 0.0})
        elif name in ("block_sessions", "release_sessions"):
            self.sessions_blocked = name == "block_sessions"
        else:
            self._execute_step(action)

    def _check_journal_is_current(self, name):
        # The journal records the state before every step that changes the board. try_slot
        # runs while the journal says INSTALLED (or REBOOTING/TRIAL when a lost boot env is
        # tried again), whose resume settles by booted slot
        # (mark_good likewise under TRIAL, and is not checked here): see journey.py.
        saved = json.loads(self.journal)["state"] if self.journal else None
        expected = self.journey.state
        if name == "try_slot":  # states whose resume settles the outcome by the booted slot
            expected = saved if saved in (lc.INSTALLED, lc.REBOOTING, lc.TRIAL) else lc.INSTALLED
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
            if self.firmware.get(self.board.slots[self.board.booted]) == "watchdog":
                raise PowerCut("watchdog")  # the release hangs in its trial: watchdog reset
            self._take(self.journey.check_results(self._results(), self.now))
        elif name in ("flash_components", "restore_components"):
            self.board.mcu = action[1]
        elif name not in ("cleanup", "confirm_components", "reject", "ignore"):
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


def _extended(doc):
    for name in ("signature", "retry_interval_s", "hold_until_allowed", "block_new_sessions",
                 "download_waits_for_sessions", "write_during_sessions"):  # fmt: skip
        if name in doc:
            return True
    return False


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
