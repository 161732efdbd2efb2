"""The journey driver's API edges: what the daemon may and may not ask of it."""

import json

import pytest

from agent.core import lifecycle as lc
from agent.core.errors import BootEnvError
from agent.core.jobs import JobMemory, parse_job
from agent.core.journey import DEFAULT_CHECKS, NEVER_CAME_UP, Journey, backoff_s
from agent.core.trial import TrialPolicy

T0 = 1767225600


def job(job_id="job-1", **fields):
    doc = {"id": job_id, "url": "https://fw/x", "version": "2.0"}
    doc.update(fields)
    return parse_job(json.dumps(doc).encode(), {"model": "m"})


def journey_at(state_events):
    j = Journey(JobMemory())
    j.offer(job(), T0, "A", "B", 0.5)
    for event in state_events:
        j.handle(event, T0)
    return j


TO_INSTALLED = (lc.TIME_REACHED, lc.DOWNLOAD_OK, lc.SIGNATURE_OK, lc.TIME_REACHED, lc.INSTALL_OK)


def test_offer_reports_download_scheduled_after_saving():
    j = Journey()
    state, actions = j.offer(job(), T0, "A", "B", 0.5)
    assert state == lc.DOWNLOAD_SCHEDULED
    assert actions == [
        ("save_journal",),
        ("report", "DownloadScheduled", {"job_id": "job-1", "version": "2.0"}),
    ]
    assert j.to_record()["memory"] == ["job-1"]


def test_signature_ok_moves_straight_on_to_install_scheduled():
    j = journey_at((lc.TIME_REACHED, lc.DOWNLOAD_OK))
    state, actions = j.handle(lc.SIGNATURE_OK, T0)
    assert state == lc.INSTALL_SCHEDULED
    assert [a[1] for a in actions if a[0] == "report"] == ["SignatureVerified", "InstallScheduled"]


def test_install_marks_the_target_slot_bad_before_writing_it():
    j = journey_at(TO_INSTALLED[:3])
    _, actions = j.tick(T0, 0, False)
    names = [a[0] for a in actions]
    assert names.index("mark_bad") < names.index("install")
    assert ("install", "B") in actions and ("mark_bad", "B") in actions


def test_cancel_after_install_started_is_refused():
    j = journey_at(TO_INSTALLED[:4])
    assert j.state == lc.INSTALLING
    assert j.cancel("job-1", T0)[1] == [
        ("reject", "job-1", "cannot cancel: installation has started")
    ]


def test_cancel_of_another_job_is_ignored():
    j = journey_at(())
    assert j.cancel("job-2", T0)[1][0][0] == "ignore"
    assert j.state == lc.DOWNLOAD_SCHEDULED


def test_result_event_out_of_order_is_an_illegal_transition():
    j = journey_at(())
    with pytest.raises(lc.IllegalTransition, match="install-ok"):
        j.handle(lc.INSTALL_OK, T0)


def test_resume_refuses_to_guess_when_the_booted_slot_is_unknown():
    j = journey_at(TO_INSTALLED + (lc.TIME_REACHED,))
    assert j.state == lc.REBOOTING
    with pytest.raises(BootEnvError, match="neither the old"):
        Journey.from_record(j.to_record()).resume("C", T0)


def test_resume_in_old_slot_after_reboot_reports_never_came_up():
    j = journey_at(TO_INSTALLED + (lc.TIME_REACHED,))
    again = Journey.from_record(j.to_record())
    state, actions = again.resume("A", T0 + 60)
    assert state == lc.ROLLED_BACK
    report = [a for a in actions if a[0] == "report"][0]
    assert report[1] == "RolledBack" and report[2]["reason"] == NEVER_CAME_UP
    assert ("reboot",) not in actions  # already on the old slot


def test_resume_in_trial_keeps_the_window_start():
    j = journey_at(TO_INSTALLED + (lc.TIME_REACHED, lc.REBOOTED_INTO_NEW))
    started = j.data["trial_started_at"]
    again = Journey.from_record(j.to_record())
    state, actions = again.resume("B", T0 + 500)
    assert state == lc.TRIAL and actions[-1] == ("run_checks",)
    _, actions = again.check_results({}, T0 + 500)
    assert actions == [("wait", started + 600, "trial")]


def test_transient_install_error_retries_after_backoff_then_fails():
    j = journey_at(TO_INSTALLED[:4])
    state, actions = j.handle(lc.INSTALL_ERROR, T0, {"reason": "network", "transient": True})
    assert state == lc.INSTALL_SCHEDULED
    assert ("mark_bad", "B") in actions
    assert j.tick(T0, 0, False)[1] == [("wait", T0 + backoff_s(1), "retry")]
    for _ in range(3):
        j.tick(T0 + 10**6, 0, False)
        j.handle(lc.INSTALL_ERROR, T0, {"reason": "network", "transient": True})
    assert j.state == lc.INSTALLATION_FAILED


def test_a_header_that_cannot_be_fetched_again_at_downloaded_is_a_failed_download():
    # After a restart at Downloaded the agent fetches the header again to verify it; a
    # transient failure downloads again later, a lasting one fails the download (before,
    # Downloaded had no such edge: IllegalTransition, and the daemon recovered forever).
    j = journey_at((lc.TIME_REACHED, lc.DOWNLOAD_OK))
    state, actions = j.handle(lc.DOWNLOAD_ERROR, T0, {"reason": "network", "transient": True})
    assert state == lc.DOWNLOAD_SCHEDULED
    assert ("report", "DownloadPaused") in [a[:2] for a in actions]
    j.tick(T0 + 10**6, 0, False)  # the retry is due: download again
    assert j.state == lc.DOWNLOADING
    j.handle(lc.DOWNLOAD_OK, T0)
    state, actions = j.handle(lc.DOWNLOAD_ERROR, T0, {"reason": "deadline", "detail": "x"})
    assert state == lc.DOWNLOAD_FAILED
    assert (
        "report",
        "DownloadFailed",
        {"job_id": "job-1", "version": "2.0", "reason": "deadline", "detail": "x"},
    ) in actions


def test_charging_session_deferral_is_reported_once_not_every_tick():
    j = journey_at(TO_INSTALLED[:3])
    reports = []
    for minute in range(5):
        _, actions = j.tick(T0 + 60 * minute, 0, True)
        reports += [a for a in actions if a[0] == "report"]
    assert len(reports) == 1 and reports[0][2]["reason"] == "charging session active"
    assert j.tick(T0 + 600, 0, False)[0] == lc.INSTALLING


def test_next_job_after_a_finished_one_starts_from_idle():
    j = journey_at((lc.TIME_REACHED, lc.DOWNLOAD_ERROR))
    assert j.state == lc.DOWNLOAD_FAILED
    state, actions = j.offer(job("job-2"), T0, "A", "B", 0.1)
    assert state == lc.DOWNLOAD_SCHEDULED
    assert j.trace[-3:] == [lc.DOWNLOAD_FAILED, lc.IDLE, lc.DOWNLOAD_SCHEDULED]
    assert j.memory.to_list() == ["job-1", "job-2"]


def test_job_checks_cannot_drop_configured_checks():
    """A job naming only "communication" must not switch off the configured charging and
    alarm checks (adversarial review #2): its list adds, the configured set stays."""
    j = Journey(JobMemory())
    j.offer(job(checks=["communication"], trial_window_s=60), T0, "A", "B", 0.5)
    for event in TO_INSTALLED + (lc.TIME_REACHED, lc.REBOOTED_INTO_NEW):
        j.handle(event, T0)
    assert j.policy().window_s == 60
    state, _ = j.check_results({"communication": (True, "ok")}, T0 + 1)
    assert state == lc.TRIAL  # still waiting for the configured checks
    everything = dict((name, (True, "ok")) for name in DEFAULT_CHECKS)
    assert j.check_results(everything, T0 + 2)[0] == lc.COMMITTED


def test_job_checks_add_to_the_configured_checks():
    j = Journey(JobMemory(), TrialPolicy(600, ["tests.daemon.plugins:ContactorSelfTest"]))
    j.offer(job(checks=["alarms"]), T0, "A", "B", 0.5)
    assert j.policy().required_checks == ["alarms", "tests.daemon.plugins:ContactorSelfTest"]
    assert j.policy().window_s == 600


def test_result_event_while_idle_is_an_illegal_transition_not_a_crash():
    with pytest.raises(lc.IllegalTransition):
        Journey().handle(lc.DOWNLOAD_ERROR, T0, {"transient": True})
