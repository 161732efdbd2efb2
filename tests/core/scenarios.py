"""Trace scenarios for the journey: scenario + injected fault -> expected states and statuses.

Each scenario is a plain function that raises AssertionError with a readable message when the
trace differs, so the same file runs under pytest (tests/core/test_scenarios.py) and under
MicroPython (tests/micropython/run_core.mjs). The fake daemon and board are in rig.py.
"""

from agent.core import lifecycle as lc
from agent.core import resets
from agent.core.journey import NEVER_CAME_UP, USED_UP_BY_POWER_LOSS, USED_UP_BY_RESETS

try:
    from tests.core.rig import ATTEMPTS, T0, Rig, check_board, check_equal, job
except ImportError:  # MicroPython: the runner puts rig.py next to this module
    from rig import ATTEMPTS, T0, Rig, check_board, check_equal, job


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
    check_equal(info["cause"], resets.CHECK_FAILED, "cause: a fleet halts on it")
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


def scenario_broker_down_during_trial_then_back_commits():
    # The broker is unreachable for the first 300 s of the 600 s trial window.
    rig = _run(Rig(firmware={"2.0": "broker-down"}, broker_down_s=300))
    check_equal(rig.states, GOOD_STATES, "states")
    check_equal(rig.statuses, GOOD_STATUSES, "statuses")
    check_board(rig, "B", "B", True)


def scenario_broker_down_for_the_whole_trial_rolls_back():
    rig = _run(Rig(firmware={"2.0": "broker-down"}, broker_down_s=3600))
    check_equal(rig.states, TO_TRIAL_STATES + [lc.ROLLED_BACK], "states")
    check_equal(rig.statuses, TO_TRIAL_STATUSES + ["RolledBack"], "statuses")
    info = rig.reports[-1][2]
    check_equal(info["check"], "communication", "failing check")
    check_equal("600s trial window" in info["evidence"], True, "evidence")
    check_board(rig, "A", "A", False)


def scenario_crash_on_boot_falls_back_by_boot_counting():
    rig = Rig(firmware={"2.0": "crash"})
    rig.deliver(job())
    rig.run()
    check_equal(rig.states, TO_TRIAL_STATES[:-1] + [lc.ROLLED_BACK], "states")
    check_equal(rig.statuses[-1], "RolledBack", "final status")
    check_equal(rig.reports[-1][2]["reason"], NEVER_CAME_UP, "reason")
    check_equal(rig.reports[-1][2]["cause"], resets.CRASH, "cause")
    check_equal(rig.board.boots, ATTEMPTS + 1, "boots: every attempt, then the old slot")
    check_board(rig, "A", "A", False)


def scenario_power_cuts_in_the_trial_resume_it_and_commit():
    # Two power cuts, each in the middle of the checks: the trial starts over on the next
    # boot of the new slot (window and checks anew) and the good release commits.
    rig = _run(Rig(cut_on=("run_checks", ATTEMPTS - 1)))
    check_equal(rig.journey.state, lc.COMMITTED, "state")
    check_board(rig, "B", "B", True)
    resumed = [r[2] for r in rig.reports if r[1] == "TrialRunning" and r[2].get("reason")]
    check_equal([r["reason"] for r in resumed], ["trial resumed after a power loss"] * 2, "why")
    check_equal(resumed[-1]["evidence"]["resets"], [resets.POWER_ON] * 2, "evidence")
    check_equal(rig.reports[-1][2]["resets"], [resets.POWER_ON] * 2, "Committed says so")
    check_equal(rig.journey.data["trial_started_at"], rig.now, "window restarted")


def scenario_power_cut_at_every_step_of_a_trial_with_unknown_resets_commits():
    # A board that cannot tell a power loss from a crash still commits a good release after
    # one cut anywhere: the attempt budget carries the trial across the reset.
    total = len(_run(Rig()).done)
    for cut in range(1, total + 1):
        rig = _run(Rig(cut_at=cut, reset_known=False))
        what = "cut before action %d (%s)" % (cut, rig.done[cut - 1])
        check_equal(rig.journey.state, lc.COMMITTED, what)
        check_board(rig, "B", "B", True)


def scenario_power_losses_that_use_up_the_attempts_roll_back_as_power_loss():
    rig = _run(Rig(cut_on=("run_checks", ATTEMPTS)))
    check_equal(rig.journey.state, lc.ROLLED_BACK, "state")
    info = rig.reports[-1][2]
    check_equal((info["reason"], info["cause"]), (USED_UP_BY_POWER_LOSS, resets.POWER_LOSS), "why")
    check_equal(info["evidence"]["resets"], [resets.POWER_ON] * ATTEMPTS, "evidence")
    check_board(rig, "A", "A", False)


def scenario_resets_the_board_cannot_explain_roll_back_as_unexplained():
    rig = _run(Rig(cut_on=("run_checks", ATTEMPTS), reset_known=False))
    info = rig.reports[-1][2]
    check_equal((info["reason"], info["cause"]), (USED_UP_BY_RESETS, resets.UNEXPLAINED), "why")
    check_board(rig, "A", "A", False)


def scenario_watchdog_reset_in_the_trial_fails_it_at_once():
    rig = _run(Rig(firmware={"2.0": "watchdog"}))
    check_equal(rig.journey.state, lc.ROLLED_BACK, "state")
    info = rig.reports[-1][2]
    check_equal(info["cause"], resets.CRASH, "cause")
    check_equal("watchdog" in info["reason"], True, "reason names the watchdog")
    # Boots after the install: B (the trial, reset by the watchdog), B (sees why, rolls back), A.
    check_equal(rig.board.boots, 3, "boots: one reset of the new slot is enough")
    check_board(rig, "A", "A", False)


def scenario_torn_boot_env_in_the_trial_is_tried_again_and_commits():
    # A cut tears a single-copy boot env during the trial: the bootloader comes back with
    # its defaults and boots the old slot, yet the new slot still has attempts. Not a
    # rollback: the journey arms the new slot again and the trial runs once more.
    cut = _index_of_action(lambda a: a[0] == "run_checks")
    rig = _run(Rig(cut_at=cut, lose_env_at=cut))
    check_equal(rig.journey.state, lc.COMMITTED, "state")
    check_board(rig, "B", "B", True)
    check_equal(rig.journey.data["env_losses"], 1, "env losses")
    again = [r for r in rig.reports if r[1] == "InstallRebooting" and r[2].get("reason")]
    check_equal(len(again), 1, "reported once as an InstallRebooting with the reason")


def scenario_agent_restart_in_the_same_boot_keeps_the_window():
    rig = Rig(firmware={"2.0": "hang"})
    rig.deliver(job())
    rig.run(until=lc.TRIAL)
    started = rig.journey.data["trial_started_at"]
    rig.now += 100
    rig.agent_restart()
    check_equal(rig.journey.data["agent_restarts"], 1, "restart counted")
    check_equal(rig.journey.data["trial_started_at"], started, "the window goes on")
    check_equal(rig.journey.data.get("trial_resets"), None, "not a reset of the board")


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
    scenario_broker_down_during_trial_then_back_commits,
    scenario_broker_down_for_the_whole_trial_rolls_back,
    scenario_crash_on_boot_falls_back_by_boot_counting,
    scenario_power_cuts_in_the_trial_resume_it_and_commit,
    scenario_power_cut_at_every_step_of_a_trial_with_unknown_resets_commits,
    scenario_power_losses_that_use_up_the_attempts_roll_back_as_power_loss,
    scenario_resets_the_board_cannot_explain_roll_back_as_unexplained,
    scenario_watchdog_reset_in_the_trial_fails_it_at_once,
    scenario_agent_restart_in_the_same_boot_keeps_the_window,
    scenario_torn_boot_env_in_the_trial_is_tried_again_and_commits,
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
