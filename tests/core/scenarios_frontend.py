"""Trace scenarios for the engine options a local front-end sets on a job (EVerest, the local
socket API): retry spacing, the hold until installation is allowed, blocked connectors, a
download or an install that waits for the charging session, and a new job that replaces the
running one. Same shape as scenarios.py: plain functions, run by pytest
(tests/core/test_scenarios_frontend.py) and under MicroPython (tests/core/test_micropython.py).
"""

from agent.core import lifecycle as lc
from agent.core.journey import WAIT_ALLOW

try:
    from tests.core.rig import T0, Rig, check_board, check_equal, job
except ImportError:  # MicroPython: the runner puts rig.py next to this module
    from rig import T0, Rig, check_board, check_equal, job


def _waiting_for(why):
    def pred(rig):
        return bool(rig.queue) and rig.queue[0][0] == "wait" and rig.queue[0][2] == why

    return pred


def scenario_retries_spaced_by_retry_interval_then_download_failed():
    rig = Rig(download=["fail"])
    starts = []
    execute = rig._execute

    def spy(action):
        if action[0] == "download":
            starts.append(rig.now)
        execute(action)

    rig._execute = spy
    rig.deliver(job(retries=2, retry_interval_s=30))
    rig.run()
    check_equal(starts, [T0, T0 + 30, T0 + 60], "download attempts (retries + 1, 30 s apart)")
    check_equal(rig.statuses.count("DownloadFailed"), 1, "DownloadFailed only after the last")
    check_equal(rig.statuses[-1], "DownloadFailed", "final")


def scenario_hold_until_allowed_installs_only_after_allow():
    rig = Rig()
    rig.deliver(job(hold_until_allowed=True))
    rig.run(until=_waiting_for(WAIT_ALLOW))
    check_equal(rig.journey.state, lc.INSTALL_SCHEDULED, "held before installing")
    check_equal("install" in rig.done, False, "nothing written while held")
    rig.queue = []
    rig._take(rig.journey.allow(rig.now))
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "after allow")
    check_board(rig, "B", "B", True)


def scenario_hold_survives_a_power_cut_before_allow():
    rig = Rig()
    rig.deliver(job(hold_until_allowed=True))
    rig.run(until=_waiting_for(WAIT_ALLOW))
    rig.queue = []
    rig.power_cycle()
    rig.run(until=_waiting_for(WAIT_ALLOW))
    check_equal(rig.journey.state, lc.INSTALL_SCHEDULED, "still held after the restart")
    rig.queue = []
    rig._take(rig.journey.allow(rig.now))
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "after allow")


def scenario_block_sessions_from_install_phase_until_trial():
    rig = Rig()
    rig.deliver(job(block_new_sessions=True))
    rig.run()
    done = rig.done
    check_equal(done.count("block_sessions") >= 1, True, "connectors blocked")
    first_block = done.index("block_sessions")
    check_equal(first_block < done.index("install"), True, "blocked before installing")
    check_equal(done.index("release_sessions") > done.index("reboot"), True, "released after")
    check_equal(rig.sessions_blocked, False, "connectors available at the end")
    check_equal(rig.statuses[-1], "Committed", "final")


def scenario_block_sessions_released_when_the_trial_fails():
    rig = Rig(firmware={"2.0": "session"})
    rig.deliver(job(block_new_sessions=True))
    rig.run()
    check_equal(rig.statuses[-1], "RolledBack", "final")
    check_equal(rig.sessions_blocked, False, "connectors available after the rollback")


def scenario_download_waits_for_the_session_to_end():
    rig = Rig(session=lambda now: now < T0 + 1000)
    rig.deliver(job(download_waits_for_sessions=True, block_new_sessions=True))
    rig.run(until=lambda r: "download" in r.done)
    check_equal(rig.now >= T0 + 1000, True, "no download while the car charges")
    reasons = [a[2].get("reason") for a in rig.reports if a[1] == "DownloadScheduled"]
    check_equal("charging session active" in reasons, True, "DownloadScheduled says why")
    check_equal(rig.done.index("block_sessions") < rig.done.index("download"), True, "blocked")
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "final")


def scenario_write_during_session_only_the_reboot_waits():
    rig = Rig(session=lambda now: now < T0 + 1000)
    rig.deliver(job(write_during_sessions=True))
    rig.run(until=lambda r: "reboot" in r.done)
    installs = [i for i in range(len(rig.done)) if rig.done[i] == "install"]
    check_equal(len(installs), 1, "written once")
    check_equal(rig.now >= T0 + 1000, True, "the reboot waited for the session")
    check_equal("Installed" in rig.statuses, True, "written during the session")
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "final")


def scenario_supersede_while_installing_invalidates_the_slot_and_runs_the_new_job():
    rig = Rig()
    rig.deliver(job("job-1", "2.0"))
    rig.run(until=lambda r: r.queue and r.queue[0][0] == "install")
    rig.queue = []  # the install step is abandoned half way
    rig.board.slots["B"] = "partial"
    actions = rig.deliver(job("job-2", "3.0"), replace=True)
    names = [a[0] for a in actions]
    check_equal(names[:2], ["save_journal", "mark_bad"], "old slot invalidated first")
    ended = [a for a in actions if a[0] == "report"][0]
    check_equal(ended[1:], ("Idle", {"reason": "cancelled", "evidence":
                "superseded by job job-2", "job_id": "job-1", "version": "2.0"}),
                "the old job ends")  # fmt: skip
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "the new job commits")
    check_equal(rig.board.slots["B"], "3.0", "slot B holds the new version")


def scenario_supersede_after_the_slot_switch_is_rejected():
    rig = Rig()
    rig.deliver(job("job-1", "2.0"))
    rig.run(until=lambda r: r.journey.state == lc.TRIAL)
    rig.queue = []  # the checks are still running
    actions = rig.deliver(job("job-2", "3.0"), replace=True)
    check_equal(actions[0][0], "reject", "rejected once the slot was handed over")
    rig.queue = [("run_checks",)]
    check_equal(rig.journey.job.id, "job-1", "the running job carries on")
    rig.run()
    check_equal(rig.statuses[-1], "Committed", "the first job commits")


SCENARIOS = (
    scenario_retries_spaced_by_retry_interval_then_download_failed,
    scenario_hold_until_allowed_installs_only_after_allow,
    scenario_hold_survives_a_power_cut_before_allow,
    scenario_block_sessions_from_install_phase_until_trial,
    scenario_block_sessions_released_when_the_trial_fails,
    scenario_download_waits_for_the_session_to_end,
    scenario_write_during_session_only_the_reboot_waits,
    scenario_supersede_while_installing_invalidates_the_slot_and_runs_the_new_job,
    scenario_supersede_after_the_slot_switch_is_rejected,
)


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
        except AssertionError as e:
            failures.append((name, str(e)))
    return passed, failures
