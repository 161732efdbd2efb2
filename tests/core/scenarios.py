"""Trace scenarios for the journey: a fake daemon runs the actions against a simulated board.

Each scenario is a plain function that raises AssertionError with a readable message when the
trace differs, so the same file runs under pytest (tests/core/test_scenarios.py) and under
MicroPython (tests/micropython/run_core.mjs). Only agent.core and json are imported here.

The simulated board behaves like the A/B boot contract: try_slot gives a slot a few attempts,
a firmware that crashes on boot burns them and the board falls back to the primary slot.
A power cut is "the agent stops between two actions"; the board then boots and a new journey
is built from the last journal record, as the daemon does after any restart.
"""

import json

from agent.core import lifecycle as lc
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import NEVER_CAME_UP, Journey
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
        self.firmware = kw.get("firmware", {})  # version -> good|crash|comm|session|hang
        self.session = kw.get("session")  # function now -> bool
        self.cut_at = kw.get("cut_at")
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
        elif name != "cleanup":
            raise AssertionError("unknown action %r" % (action,))

    def _results(self):
        kind = self.firmware.get(self.board.slots[self.board.booted], "good")
        if kind == "hang":
            return {}
        results = {}
        for name in ("alarms", "charging-session", "communication"):
            results[name] = (True, "ok")
        if kind == "comm":
            results["communication"] = (False, "CSMS rejected BootNotification")
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


# --- expected traces -------------------------------------------------------------------------

UP_TO_INSTALL = [
    lc.IDLE,
    lc.DOWNLOAD_SCHEDULED,
    lc.DOWNLOADING,
    lc.DOWNLOADED,
    lc.SIGNATURE_VERIFIED,
    lc.INSTALL_SCHEDULED,
    lc.INSTALLING,
]
STATUS_UP_TO_INSTALL = [
    "DownloadScheduled",
    "Downloading",
    "Downloaded",
    "SignatureVerified",
    "InstallScheduled",
    "Installing",
]
GOOD_STATES = UP_TO_INSTALL + [lc.INSTALLED, lc.REBOOTING, lc.TRIAL, lc.COMMITTED]
GOOD_STATUSES = STATUS_UP_TO_INSTALL + [
    "Installed",
    "InstallRebooting",
    "TrialRunning",
    "Committed",
]
TO_TRIAL_STATES = UP_TO_INSTALL + [lc.INSTALLED, lc.REBOOTING, lc.TRIAL]
TO_TRIAL_STATUSES = STATUS_UP_TO_INSTALL + ["Installed", "InstallRebooting", "TrialRunning"]


def scenario_good_update_commits():
    rig = Rig()
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, GOOD_STATES, "states")
    check_equal(rig.statuses, GOOD_STATUSES, "statuses")
    check_board(rig, "B", "B", True)
    check_equal(rig.board.slots["B"], "2.0", "slot B holds")
    return rig


def scenario_bad_signature_leaves_board_untouched():
    rig = Rig(signature="bad")
    rig.deliver(job())
    rig.run()
    check_equal(
        rig.states,
        [lc.IDLE, lc.DOWNLOAD_SCHEDULED, lc.DOWNLOADING, lc.DOWNLOADED, lc.INVALID_SIGNATURE],
        "states",
    )
    check_equal(
        rig.statuses, ["DownloadScheduled", "Downloading", "Downloaded", "InvalidSignature"], "st"
    )
    check_equal(rig.board.slots["B"], "0.9", "slot B never written")
    check_equal(rig.reports[-1][2]["reason"], "bad-signature", "reason")
    check_equal("install" in rig.done or "try_slot" in rig.done, False, "install attempted")


def scenario_crash_during_install_resumes_and_commits():
    rig = Rig(cut_at=_index_of_action(lambda a: a[0] == "install"))
    rig.deliver(job())
    rig.run()
    expected = UP_TO_INSTALL + [lc.INSTALL_SCHEDULED, lc.INSTALLING]
    check_equal(rig.states, expected + GOOD_STATES[len(UP_TO_INSTALL) :], "states")
    check_equal(
        rig.statuses,
        STATUS_UP_TO_INSTALL + ["InstallScheduled", "Installing"] + GOOD_STATUSES[6:],
        "statuses",
    )
    # The half-written slot was marked bad before anything else happened after the restart.
    after_cut = rig.done[rig.done.index("CUT:install") + 1 :]
    check_equal(after_cut[:2], ["save_journal", "mark_bad"], "first actions after the restart")
    check_board(rig, "B", "B", True)


def scenario_power_cut_at_every_step_still_commits_once():
    total = len(scenario_good_update_commits().done)
    for cut in range(1, total + 1):
        rig = Rig(cut_at=cut)
        rig.deliver(job())
        rig.run()
        what = "cut before action %d (%s)" % (cut, rig.done[cut - 1])
        check_equal(rig.journey.state, lc.COMMITTED, what)
        check_equal(rig.statuses[-1], "Committed", what)
        check_board(rig, "B", "B", True)
        check_equal(rig.board.slots["B"], "2.0", what)
        # Reports are at least once: a cut right after one repeats it on resume.
        check_equal(rig.statuses.count("Committed") in (1, 2), True, what + ": Committed")
        # The same job delivered again after all that is ignored, not installed again.
        actions = rig.deliver(job())
        check_equal(actions, [("ignore", "job-1", "duplicate or replayed job id")], what)


def scenario_comm_check_fails_rolls_back():
    rig = Rig(firmware={"2.0": "comm"})
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, TO_TRIAL_STATES + [lc.ROLLED_BACK], "states")
    check_equal(rig.statuses, TO_TRIAL_STATUSES + ["RolledBack"], "statuses")
    info = rig.reports[-1][2]
    check_equal(
        (info["check"], info["evidence"]),
        ("communication", "CSMS rejected BootNotification"),
        "why",
    )
    check_board(rig, "A", "A", False)


def scenario_power_cut_at_every_step_of_a_rollback():
    total = len(_run(Rig(firmware={"2.0": "comm"})).done)
    for cut in range(1, total + 1):
        rig = _run(Rig(firmware={"2.0": "comm"}, cut_at=cut))
        what = "cut before action %d (%s)" % (cut, rig.done[cut - 1])
        check_equal(rig.journey.state, lc.ROLLED_BACK, what)
        check_equal(rig.statuses[-1], "RolledBack", what)
        check_equal(rig.reports[-1][2].get("check"), "communication", what)
        check_board(rig, "A", "A", False)


def scenario_regression_after_commit_rolls_back_by_policy():
    rig = _run(Rig())
    finding = {"kind": "new-fault-codes", "evidence": "fault codes not seen before: E42"}
    rig._take(rig.journey.regression(rig.now + 3600, finding, "report-only"))
    rig.run()
    check_equal(rig.journey.state, lc.COMMITTED, "report-only keeps the commit")
    check_equal(rig.reports[-1][2]["reason"], "regression", "reported")
    rig._take(rig.journey.regression(rig.now + 7200, finding, "rollback"))
    rig.run()
    check_equal(rig.states[-2:], [lc.COMMITTED, lc.ROLLED_BACK], "states")
    check_equal(rig.statuses[-2:], ["Committed", "RolledBack"], "statuses")
    check_equal(rig.reports[-1][2]["check"], "new-fault-codes", "which finding")
    check_board(rig, "A", "A", False)


def scenario_session_check_fails_rolls_back():
    rig = Rig(firmware={"2.0": "session"})
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, TO_TRIAL_STATES + [lc.ROLLED_BACK], "states")
    check_equal(rig.reports[-1][2]["check"], "charging-session", "failing check")
    check_board(rig, "A", "A", False)


def scenario_trial_window_expires_rolls_back():
    rig = Rig(firmware={"2.0": "hang"})
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, TO_TRIAL_STATES + [lc.ROLLED_BACK], "states")
    info = rig.reports[-1][2]
    check_equal(info["check"], "alarms", "first silent check")
    check_equal("600s trial window" in info["evidence"], True, "evidence names the window")
    check_board(rig, "A", "A", False)


def scenario_crash_on_boot_falls_back_by_boot_counting():
    rig = Rig(firmware={"2.0": "crash"})
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, TO_TRIAL_STATES[:-1] + [lc.ROLLED_BACK], "states")
    check_equal(rig.statuses[-1], "RolledBack", "final status")
    check_equal(rig.reports[-1][2]["reason"], NEVER_CAME_UP, "reason")
    check_equal(rig.board.boots, ATTEMPTS + 1, "boots: every attempt, then the old slot")
    check_board(rig, "A", "A", False)


def scenario_duplicate_job_is_ignored():
    rig = Rig()
    rig.deliver(job())
    rig.run()
    check_equal(rig.deliver(job())[0][0], "ignore", "redelivered job")
    busy = Rig()
    busy.deliver(job("job-7"))
    check_equal(busy.deliver(job("job-8"))[0][:2], ("reject", "job-8"), "second job while busy")


def scenario_job_during_charging_session_is_deferred():
    # A car charges from 00:00 to 00:40 UTC; the install waits for it, then goes.
    def charging(now):
        return now < T0 + 2400

    rig = Rig(session=charging)
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, GOOD_STATES, "states")
    check_equal(rig.statuses[:6], STATUS_UP_TO_INSTALL[:5] + ["InstallScheduled"], "deferral")
    deferral = rig.reports[5][2]
    check_equal(deferral["reason"], "charging session active", "deferral reason")
    installs = [r for r in rig.reports if r[1] == "Installing"]
    check_equal(len(installs), 1, "installs")


def scenario_session_outlasting_window_waits_for_next_day():
    # Window 01:00-02:00 local (UTC+1 => 00:00-01:00 UTC); the car charges until 01:30 UTC,
    # so the install happens in the next day's window.
    def charging(now):
        return now < T0 + 5400

    rig = Rig(session=charging, offset=3600)
    rig.deliver(job(window={"start": "01:00", "end": "02:00"}))
    rig.run()
    check_equal(rig.states, GOOD_STATES, "states")
    starts = rig.journey.data["trial_started_at"]
    check_equal(T0 + 86400 <= starts < T0 + 86400 + 3600, True, "installed next day, in window")


def scenario_transient_download_error_retries_then_fails():
    rig = Rig(download=["net", "ok"])
    rig.deliver(job())
    rig.run()
    check_equal(
        rig.statuses[:4],
        ["DownloadScheduled", "Downloading", "DownloadPaused", "Downloading"],
        "retry",
    )
    check_equal(rig.journey.state, lc.COMMITTED, "final")
    fails = Rig(download=["net"])
    fails.deliver(job(retries=1))
    fails.run()
    check_equal(fails.states[-1], lc.DOWNLOAD_FAILED, "after retries run out")
    check_equal(fails.statuses[-1], "DownloadFailed", "status")


def scenario_install_readback_mismatch_invalidates_slot():
    rig = Rig(install=["readback"])
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, UP_TO_INSTALL + [lc.INSTALL_VERIFICATION_FAILED], "states")
    check_equal(rig.statuses[-1], "InstallVerificationFailed", "status")
    check_equal(rig.board.good["B"], False, "slot B marked bad")
    check_equal("try_slot" in rig.done, False, "never tried")


def scenario_cancel_before_install():
    rig = Rig()
    rig.deliver(job(not_before=T0 + 3600))
    rig.journey.cancel("job-1", rig.now)
    _, actions = rig.journey.cancel("job-1", rig.now)
    check_equal(actions[0][0], "ignore", "second cancel")
    check_equal(rig.journey.state, lc.CANCELLED, "state")


SCENARIOS = (
    scenario_good_update_commits,
    scenario_bad_signature_leaves_board_untouched,
    scenario_crash_during_install_resumes_and_commits,
    scenario_power_cut_at_every_step_still_commits_once,
    scenario_comm_check_fails_rolls_back,
    scenario_power_cut_at_every_step_of_a_rollback,
    scenario_regression_after_commit_rolls_back_by_policy,
    scenario_session_check_fails_rolls_back,
    scenario_trial_window_expires_rolls_back,
    scenario_crash_on_boot_falls_back_by_boot_counting,
    scenario_duplicate_job_is_ignored,
    scenario_job_during_charging_session_is_deferred,
    scenario_session_outlasting_window_waits_for_next_day,
    scenario_transient_download_error_retries_then_fails,
    scenario_install_readback_mismatch_invalidates_slot,
    scenario_cancel_before_install,
)


def _run(rig, doc=None):
    rig.deliver(doc or job())
    return rig.run()


def _index_of_action(pred):
    rig = Rig()
    rig.deliver(job())
    rig.run()
    for i in range(len(rig.done)):
        if pred((rig.done[i],)):
            return i + 1
    raise AssertionError("no such action")


def run_all(names=None):
    """Run every scenario; returns (passed, failures) with failures as (name, message)."""
    passed, failures = [], []
    for fn in SCENARIOS:
        name = fn.__name__
        if names and name not in names:
            continue
        try:
            fn()
            passed.append(name)
        except Exception as e:  # noqa: BLE001 - report every scenario, then fail
            failures.append((name, "%s: %s" % (type(e).__name__, e)))
    return passed, failures
