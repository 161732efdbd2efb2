"""Trial verdicts, alarm baselines, crash loops and the observation period after commit."""

import pytest

from agent.core import trial

CHECKS = ["communication", "charging-session", "alarms"]


def test_all_checks_passing_passes():
    policy = trial.TrialPolicy(600, CHECKS)
    results = {name: (True, "ok") for name in CHECKS}
    assert policy.verdict(results, 100, 0) == ("passed", None, None)


def test_one_failing_check_fails_with_its_evidence_even_inside_the_window():
    policy = trial.TrialPolicy(600, CHECKS)
    results = {"communication": (True, "ok"), "charging-session": (False, "0 Wh delivered")}
    assert policy.verdict(results, 10, 0) == ("failed", "charging-session", "0 Wh delivered")


def test_silent_check_fails_when_the_window_ends():
    policy = trial.TrialPolicy(600, CHECKS)
    results = {"communication": (True, "ok"), "alarms": (None, None)}
    assert policy.verdict(results, 599, 0) == ("running", None, None)
    verdict, check, evidence = policy.verdict(results, 600, 0)
    assert (verdict, check) == ("failed", "alarms")
    assert "600s trial window" in evidence and "charging-session" in evidence


def test_trial_without_checks_is_refused():
    with pytest.raises(ValueError):
        trial.TrialPolicy(600, [])


def test_new_fault_code_is_a_regression():
    finding = trial.compare({"codes": ["E1"], "rate_per_hour": 0.5}, {"codes": ["E1", "E7"]})
    assert finding["kind"] == "new-fault-codes" and finding["codes"] == ["E7"]


def test_fault_storm_above_baseline_is_a_regression_but_noise_is_not():
    base = {"codes": ["E1"], "rate_per_hour": 2.0}
    assert trial.compare(base, {"codes": ["E1"], "rate_per_hour": 5.0}) is None  # 2*2+1
    finding = trial.compare(base, {"codes": ["E1"], "rate_per_hour": 5.1})
    assert finding["kind"] == "fault-rate" and "5.10/h" in finding["evidence"]


def test_crash_loop_from_boot_count_or_restarts():
    assert trial.crash_loop(1, 0) is None
    assert "booted 2 times" in trial.crash_loop(2, 0)
    assert "restarted 4 times" in trial.crash_loop(1, 4)


def test_observation_rolls_back_only_by_policy_and_while_old_slot_intact():
    storm = {"codes": ["E9"]}
    rollback = trial.Observation(days=2, policy=trial.ROLLBACK)
    assert rollback.review(3600, 0, {"codes": []}, storm)[1] == trial.ROLLBACK
    assert rollback.review(3600, 0, {"codes": []}, storm, previous_slot_intact=False)[1] == (
        trial.REPORT_ONLY
    )
    assert trial.Observation(days=2).review(3600, 0, {"codes": []}, storm)[1] == trial.REPORT_ONLY
    assert rollback.review(2 * 86400, 0, {"codes": []}, storm) == (None, None)
    assert rollback.review(3600, 0, {"codes": []}, {"codes": []}) == (None, None)


def test_session_failures_above_baseline_are_a_regression():
    from agent.core.trial import compare_sessions

    base = {"started": 40, "failed": 1}
    assert compare_sessions(base, {"started": 1, "failed": 2}) is not None
    assert compare_sessions(base, {"started": 9, "failed": 1}) is None  # within the slack
    assert compare_sessions(base, {"started": 0, "failed": 2}) is None  # too few to judge
    assert compare_sessions(None, {"started": 0, "failed": 5}) is None  # stack counts nothing
    finding = compare_sessions({"started": 0, "failed": 0}, {"started": 0, "failed": 3})
    assert finding["kind"] == "session-failures" and "3 of 3" in finding["evidence"]


def test_observation_reports_session_failures_when_alarms_are_quiet():
    from agent.core.trial import ROLLBACK, Observation

    obs = Observation(1, ROLLBACK)
    baseline = {"codes": [], "rate_per_hour": 0.0, "sessions": {"started": 20, "failed": 0}}
    observed = {"codes": [], "rate_per_hour": 0.0, "sessions": {"started": 1, "failed": 3}}
    finding, decision = obs.review(100, 0, baseline, observed)
    assert finding["kind"] == "session-failures" and decision == ROLLBACK
