"""Scenarios for a release that carries MCU firmware: one trial for the Linux slot and the
MCUs, committed together or rolled back together. The safety MCU is flashed through the
STM32 ROM bootloader (a rollback writes the old image again), the energy meter MCU through
MCUboot's SMP (a rollback is MCUboot's own revert). They need a rig whose MCUs it can
inspect (the virtual board's emulators); other rigs skip them."""

import pytest

from hil.scenarios.test_catalogue import FINAL, T, settled_row, update


@pytest.fixture
def mcu_rig(rig):
    if not hasattr(rig, "mcu_version"):
        pytest.skip("this rig has no inspectable safety MCU")
    assert rig.mcu_version() == "1.0.0"
    return rig


@pytest.fixture
def meter_rig(rig):
    if not hasattr(rig, "meter_state"):
        pytest.skip("this rig has no inspectable MCUboot meter MCU")
    assert rig.meter_state() == ("1.0.0", True)
    return rig


def uploads(rig):
    return [e for e in rig.board.meter.events if e[0] == "upload-start"]


def test_good_rootfs_and_mcu_commit_together(mcu_rig):
    rig = mcu_rig
    job, _ = update(rig, "1.1.0", "Committed", mcu=("2.1.0", ()))
    row = settled_row(rig, job["id"])
    # The meter, not in this release, keeps its version (and its image, for a rollback).
    assert row["components"] == {"rootfs": "1.1.0", "safety": "2.1.0", "meter": "1.0.0"}
    assert rig.mcu_version() == "2.1.0"
    checks = [s for s in rig.statuses(job["id"]) if s.get("check") == "components"]
    assert checks and checks[-1]["passed"]
    assert checks[-1]["evidence"]["running"] == {"safety": "2.1.0", "meter": "1.0.0"}


def test_mcu_image_that_breaks_the_session_rolls_back_both(mcu_rig):
    rig = mcu_rig
    old = rig.start_row["booted"]
    job, final = update(rig, "1.1.0", "RolledBack", mcu=("2.2.0", ("breaks-session",)))
    assert final["check"] == "charging-session", final
    row = settled_row(rig, job["id"])
    assert row["booted"] == old
    assert rig.mcu_version() == "1.0.0"  # written back from the image kept with slot A
    assert row["components"]["safety"] == "1.0.0"


def test_mcu_that_never_answers_after_the_flash_rolls_back_both(mcu_rig):
    rig = mcu_rig
    job, final = update(rig, "1.1.0", "RolledBack", mcu=("2.3.0", ("no-answer",)))
    assert final["check"] == "components", final
    assert "2.3.0" in str(final["evidence"])
    settled_row(rig, job["id"])
    assert rig.mcu_version() == "1.0.0"


def test_power_cut_in_the_middle_of_the_mcu_write(mcu_rig):
    rig = mcu_rig
    mcu = rig.board.mcu
    job = rig.push_job("1.1.0", rig.release("1.1.0", mcu=("2.4.0", ())))
    rig.scenario.update(job=job["id"], expect="one release")
    rig.wait_status(job["id"], "TrialRunning", T)
    assert mcu.wait_for(lambda ev: sum(1 for e in ev if e[0] == "write") >= 20, T)
    rig.power_cut()  # the MCU's flash is half old, half new: its application is gone
    rig.power_on()
    final = rig.wait_status(job["id"], FINAL, 2 * T)
    rig.scenario["final"] = final
    row = settled_row(rig, job["id"])
    # Whatever the outcome, every component runs the release of the slot that booted.
    expected = {"Committed": ("1.1.0", "2.4.0"), "RolledBack": ("1.0.0", "1.0.0")}
    assert final["status"] in expected, final
    assert (row["slots"][row["booted"]]["version"], rig.mcu_version()) == expected[
        final["status"]]  # fmt: skip
    assert row["components"]["safety"] == rig.mcu_version()


def test_good_rootfs_and_both_mcus_commit_together(mcu_rig, meter_rig):
    rig = meter_rig
    job, _ = update(rig, "1.1.0", "Committed", mcu=("2.1.0", ()), meter=("2.1.0", ()))
    row = settled_row(rig, job["id"])
    assert row["components"] == {"rootfs": "1.1.0", "safety": "2.1.0", "meter": "2.1.0"}
    assert rig.mcu_version() == "2.1.0"
    assert rig.meter_state() == ("2.1.0", True)  # confirmed at the commit: MCUboot keeps it
    checks = [s for s in rig.statuses(job["id"]) if s.get("check") == "components"]
    assert checks[-1]["evidence"]["running"] == {"safety": "2.1.0", "meter": "2.1.0"}


def test_meter_image_that_breaks_the_session_rolls_back_by_mcuboots_revert(meter_rig):
    rig = meter_rig
    job, final = update(rig, "1.1.0", "RolledBack", meter=("2.2.0", ("breaks-session",)))
    assert final["check"] == "charging-session", final
    assert "meter" in str(final["evidence"]) or final["evidence"].get("energy_wh") == 0, final
    row = settled_row(rig, job["id"])
    assert rig.meter_state() == ("1.0.0", True)
    assert ("revert", "1.0.0") in rig.board.meter.events
    assert len(uploads(rig)) == 1  # the old image came back without being uploaded again
    assert row["components"]["meter"] == "1.0.0"


def test_meter_that_never_answers_after_the_flash_is_reverted_through_its_reset_line(meter_rig):
    rig = meter_rig
    job, final = update(rig, "1.1.0", "RolledBack", meter=("2.3.0", ("no-answer",)))
    assert final["check"] == "components", final
    assert "2.3.0" in str(final["evidence"])
    row = settled_row(rig, job["id"])
    events = rig.board.meter.events
    assert ("hang", "2.3.0") in events and ("nrst", False) in events
    assert ("revert", "1.0.0") in events and rig.meter_state() == ("1.0.0", True)
    assert row["components"]["meter"] == "1.0.0"


def test_power_cut_in_the_middle_of_the_meter_upload(meter_rig):
    rig = meter_rig
    meter = rig.board.meter
    job = rig.push_job("1.1.0", rig.release("1.1.0", meter=("2.4.0", ())))
    rig.scenario.update(job=job["id"], expect="one release")
    rig.wait_status(job["id"], "TrialRunning", T)
    assert meter.wait_for(lambda ev: sum(1 for e in ev if e[0] == "upload") >= 3, T)
    rig.power_cut()  # the secondary slot is half written; the primary still holds 1.0.0
    rig.power_on()
    final = rig.wait_status(job["id"], FINAL, 2 * T)
    rig.scenario["final"] = final
    row = settled_row(rig, job["id"])
    expected = {"Committed": ("1.1.0", ("2.4.0", True)), "RolledBack": ("1.0.0", ("1.0.0", True))}
    assert final["status"] in expected, final
    assert (row["slots"][row["booted"]]["version"], rig.meter_state()) == expected[
        final["status"]]  # fmt: skip
    assert row["components"]["meter"] == rig.meter_state()[0]
