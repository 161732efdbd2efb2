"""The scenario catalogue: what every release must survive before it ships.

Each test runs on any rig (`--rig`): it pushes a real signed release as an MQTT job and
watches the statuses the charger reports, as an operator would. Waits are on reported
statuses or console lines, each with a timeout; nothing sleeps. Slots are named relative to
the one booted when the scenario starts (`rig.start_row`), since a bench board is not reset
between scenarios.
"""

import re

import pytest

from agent.core.lifecycle import FINAL_STATUSES

FINAL = FINAL_STATUSES
T = 60  # seconds per journey; a healthy one takes about 5 on the virtual board


def update(rig, version, expect, **release):
    url = rig.release(version, **release)
    job = rig.push_job(version, url)
    rig.scenario.update(job=job["id"], expect=expect)
    final = rig.wait_status(job["id"], FINAL, T)
    rig.scenario["final"] = final
    assert final["status"] == expect, final
    return job, final


def slots(rig):
    """(the slot booted at the start, the slot an update goes to)."""
    old = rig.start_row["booted"]
    return old, [s for s in rig.start_row["slots"] if s != old][0]


def boots(rig):
    return len(re.findall(rig.boot_banner, rig.console_text()))


def settled_row(rig, job_id):
    return rig.backend.wait_inventory(
        rig.device_id, lambda r: (r.get("last_job") or {}).get("id") == job_id, T
    )


def test_good_update_commits(rig):
    old, new = slots(rig)
    job, _ = update(rig, "1.1.0", "Committed")
    fetched = [r for r in rig.images.requests if r["path"].endswith("charger-1.1.0.cub")]
    # what this board's agent fetches for a bundle (the rig says): never more
    assert [r["range"] for r in fetched] == list(rig.bundle_requests), fetched
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == new
    assert row["slots"][new]["version"] == "1.1.0"
    names = [s["status"] for s in rig.statuses(job["id"])]
    for expected in (
        "Downloading",
        "SignatureVerified",
        "Installing",
        "Installed",
        "InstallRebooting",
        "TrialRunning",
        "Committed",
    ):
        assert expected in names


def test_bad_signature_refused_with_board_untouched(rig):
    old, new = slots(rig)
    boots_before = boots(rig)
    job, final = update(rig, "6.6.6", "InvalidSignature", signed_by_stranger=True)
    assert final["reason"] in ("unknown-key", "bad-signature")
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == old
    assert row["slots"][new]["attempts_left"] == 0
    assert "Installing" not in [s["status"] for s in rig.statuses(job["id"])]
    assert boots(rig) == boots_before  # never rebooted


def test_crash_looping_firmware_falls_back_by_boot_counting(rig):
    old, _ = slots(rig)
    job, final = update(rig, "1.1.0", "RolledBack", defects=("crash-on-boot",))
    assert "never came up" in final["reason"]
    assert final["cause"] == "crash"  # a fleet halts on it
    assert settled_row(rig, job["id"])["booted"] == old


@pytest.mark.parametrize(
    "defect, check",
    [
        ("no-backend", "communication"),
        ("refuse-session", "charging-session"),
        ("alarm-storm", "alarms"),
    ],
)
def test_broken_path_rolls_back(rig, defect, check):
    old, new = slots(rig)
    job, final = update(rig, "1.1.0", "RolledBack", defects=(defect,))
    assert final["check"] == check, final
    assert final["cause"] == "check-failed"
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == old
    assert row["slots"][new]["attempts_left"] == 0


def test_hung_agent_is_reset_by_watchdog_and_falls_back(rig):
    old, _ = slots(rig)
    boots_before = boots(rig)
    job, final = update(rig, "1.1.0", "RolledBack", defects=("hang-agent",))
    assert "never came up" in final["reason"]
    assert (final["cause"], final["evidence"]["reset"]) == ("crash", "watchdog")
    # The board's reset cause ends the trial after one watchdog period, not trial_attempts.
    assert boots(rig) - boots_before == 2  # the hung new slot once, then the old one
    assert settled_row(rig, job["id"])["booted"] == old


@pytest.mark.parametrize("rig", [2 * 1024 * 1024], indirect=True, ids=["2MiBps"])
def test_power_cut_during_payload_write(rig):
    boots_before = boots(rig)
    url = rig.release("1.1.0", pad_bytes=6 * 1024 * 1024)
    job = rig.push_job("1.1.0", url)
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "Installing", T)
    rig.backend.wait_status(rig.device_id, lambda s: (s.get("progress") or 0) >= 30, T)
    rig.power_cut()
    rig.power_on()
    final = rig.wait_status(job["id"], FINAL, 2 * T)
    rig.scenario["final"] = final
    assert final["status"] == "Committed", final
    assert boots(rig) - boots_before >= 2  # after the cut: the old slot again, then the new


def test_power_cut_during_environment_write(rig):
    """The cut lands while the agent switches the boot env (right after Installed). The
    bootloader must ignore a torn env copy and the journey must still finish."""
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "Installed", T)
    rig.power_cut_during_env_write()
    rig.power_on()
    final = rig.wait_status(job["id"], FINAL, T)
    rig.scenario["final"] = final
    assert final["status"] == "Committed", final


@pytest.mark.parametrize("rig", [2 * 1024 * 1024], indirect=True, ids=["2MiBps"])
def test_network_drop_mid_download_resumes(rig):
    url = rig.release("1.1.0", pad_bytes=4 * 1024 * 1024)
    job = rig.push_job("1.1.0", url)
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "Installing", T)
    rig.network.cut_after(1024 * 1024)
    assert rig.network.wait_cut(T)
    final = rig.wait_status(job["id"], FINAL, T)
    rig.scenario["final"] = final
    assert final["status"] == "Committed", final
    assert any(r["range"] for r in rig.images.requests), "no Range request after the drop"


# The outage must begin before the communication check, which runs after the alarm
# observation (checks run in name order): 3 s leaves the test time to stop the broker; the
# check then rides the outage out for up to half the trial window, as by default.
@pytest.mark.virtual_agent(trial={"alarms": {"observe_s": 3}, "communication": {"retry_for_s": 15}})
def test_broker_outage_during_trial_is_ridden_out(rig):
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "TrialRunning", T)
    rig.broker.stop()
    rig.console.expect(r"MQTT backend unreachable", T)
    rig.broker.start()
    # The broker keeps no sessions: wait until the backend is subscribed again, so the
    # agent's next ping is not published into nobody's subscription.
    assert rig.backend.channel.wait_connections(2, T) and rig.backend.channel.wait_subscribed(T)
    final = rig.wait_status(job["id"], FINAL, T)
    rig.scenario["final"] = final
    assert final["status"] == "Committed", final
