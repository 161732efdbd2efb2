"""The scenario catalogue: what every release must survive before it ships.

Each test runs on any rig (`--rig`): it pushes a real signed release as an MQTT job and
watches the statuses the charger reports, as an operator would. Waits are on reported
statuses or console lines, each with a timeout; nothing sleeps.
"""

import pytest

from agent.core.lifecycle import FINAL_STATUSES
from bootloader_iface.uboot_env import encode_copy
from hil.virtual import layout

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


def settled_row(rig, job_id):
    return rig.backend.wait_inventory(
        rig.device_id, lambda r: (r.get("last_job") or {}).get("id") == job_id, T
    )


def test_good_update_commits(rig):
    job, _ = update(rig, "1.1.0", "Committed")
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "B"
    assert row["slots"]["B"]["version"] == "1.1.0"
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
    job, final = update(rig, "6.6.6", "InvalidSignature", signed_by_stranger=True)
    assert final["reason"] in ("unknown-key", "bad-signature")
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "A"
    assert row["slots"]["B"]["attempts_left"] == 0
    assert "Installing" not in [s["status"] for s in rig.statuses(job["id"])]
    assert rig.console_text().count("booting slot") == 1  # never rebooted


def test_crash_looping_firmware_falls_back_by_boot_counting(rig):
    job, final = update(rig, "1.1.0", "RolledBack", defects=("crash-on-boot",))
    assert "never came up" in final["reason"]
    assert "panic" in rig.console_text()
    assert settled_row(rig, job["id"])["booted"] == "A"


@pytest.mark.parametrize(
    "defect, check",
    [
        ("no-backend", "communication"),
        ("refuse-session", "charging-session"),
        ("alarm-storm", "alarms"),
    ],
)
def test_broken_path_rolls_back(rig, defect, check):
    job, final = update(rig, "1.1.0", "RolledBack", defects=(defect,))
    assert final["check"] == check, final
    row = settled_row(rig, job["id"])
    assert row["booted"] == row["primary"] == "A"
    assert row["slots"]["B"]["attempts_left"] == 0


def test_hung_agent_is_reset_by_watchdog_and_falls_back(rig):
    job, final = update(rig, "1.1.0", "RolledBack", defects=("hang-agent",))
    assert "never came up" in final["reason"]
    assert "watchdog" in rig.console_text()


@pytest.mark.parametrize("rig", [2 * 1024 * 1024], indirect=True, ids=["2MiBps"])
def test_power_cut_during_payload_write(rig):
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
    assert rig.console_text().count("charger firmware 1.0.0 on slot A") >= 2


def test_power_cut_during_environment_write(rig):
    """The cut lands while the agent switches the boot env: half of the new env copy is on
    flash. The boot ROM must ignore the torn copy and the journey must still finish."""
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "Installed", T)
    rig.power_cut()
    env = layout.boot_env(rig.board.dir)
    variables, active, flags = env.read_state()
    torn = dict(variables, BOOT_ORDER="B A", BOOT_B_LEFT="1")
    blob = encode_copy(torn, env.size, True, (flags[active] + 1) % 256)
    inactive = env.copies[1 - active]
    with open(inactive["device"], "r+b") as f:  # only the first half reached the flash
        f.seek(inactive["offset"])
        f.write(blob[: len(blob) // 2])
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


def test_broker_outage_during_trial_is_ridden_out(rig):
    job = rig.push_job("1.1.0", rig.release("1.1.0"))
    rig.scenario.update(job=job["id"], expect="Committed")
    rig.wait_status(job["id"], "TrialRunning", T)
    rig.broker.stop()
    rig.console.expect(r"MQTT backend unreachable", T)
    rig.broker.start()
    final = rig.wait_status(job["id"], FINAL, T)
    rig.scenario["final"] = final
    assert final["status"] == "Committed", final
