"""The RAUC-style scheme (hil/qemu_scripts/rauc_select.hush) on the real U-Boot.

Our side writes BOOT_ORDER/BOOT_x_LEFT with fw_setenv, as the agent's try_slot does; U-Boot
must count the trial slot's attempts down in flash across resets and power cuts and then
come back to the good slot by itself. The env is read back with fw_printenv afterwards.
"""

import re

import pytest

from hil.qemu import missing_prerequisites, rauc_env

MISSING = missing_prerequisites()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="QEMU U-Boot rig unavailable: %s (run make qemu-deps)" % "; ".join(MISSING),
)

BOOTING = r"BOOTING SLOT (\w) \(left (\w+)\)"


def boots(console, n, timeout=30):
    """The next n 'BOOTING SLOT' lines as (slot, left) pairs."""
    return [console.expect(BOOTING, timeout).groups() for _ in range(n)]


def test_crashing_trial_slot_counts_down_across_resets_then_falls_back(make_board):
    # B's firmware crashes at once (U-Boot `reset`), like a kernel that panics and reboots.
    board = make_board(env=rauc_env("B A", {"A": 3, "B": 3}, {"B": "crash"}))
    console = board.start()
    assert boots(console, 4) == [("B", "2"), ("B", "1"), ("B", "0"), ("A", "2")]
    console.expect("FIRMWARE A RUNNING", timeout=20)
    board.wait_prompt()
    board.stop()
    env = board.env().read()
    assert (env["BOOT_ORDER"], env["BOOT_B_LEFT"], env["BOOT_A_LEFT"]) == ("B A", "0", "2")
    # Every trial boot saved before it booted, and B crashed after each one.
    assert console_count(board, "FIRMWARE B CRASHED") == 3
    assert console_count(board, "Saving Environment to Flash") == 4


def test_hung_trial_slot_loses_its_attempt_on_power_cut(make_board):
    # B hangs (no reset by itself): the rig cuts power, as a watchdog or a person would.
    # The attempt was saved before booting, so the count survives the QEMU process dying.
    board = make_board(env=rauc_env("B A", {"A": 3, "B": 2}, {"B": "hang"}))
    seen = []
    for _ in range(3):
        console = board.power_cycle() if seen else board.start()
        seen += boots(console, 1)
        console.expect(r"FIRMWARE \w (HANGS|RUNNING)", timeout=20)
    assert seen == [("B", "1"), ("B", "0"), ("A", "2")]
    board.stop()
    assert board.env().read()["BOOT_B_LEFT"] == "0"


def test_agent_commit_after_good_trial_keeps_the_new_slot(make_board):
    # B boots fine; the agent on B marks it good (refills the attempts, fw_setenv from our
    # side) and the next power-on boots B again instead of falling back.
    board = make_board(env=rauc_env("B A", {"A": 3, "B": 1}))
    console = board.start()
    assert boots(console, 1) == [("B", "0")]
    console.expect("FIRMWARE B RUNNING", timeout=20)
    board.stop()
    board.env().write({"BOOT_B_LEFT": "3", "BOOT_ORDER": "B A"})
    console = board.start()
    assert boots(console, 1) == [("B", "2")]


def test_no_attempts_left_boots_the_good_slot_without_writing(make_board):
    board = make_board(env=rauc_env("B A", {"A": 0, "B": 0}))
    console = board.start()
    assert boots(console, 1) == [("A", "fallback")]
    console.expect("FIRMWARE A RUNNING", timeout=20)
    board.wait_prompt()
    board.stop()
    assert console_count(board, "Saving Environment") == 0
    env = board.env().read()
    assert (env["BOOT_A_LEFT"], env["BOOT_B_LEFT"]) == ("0", "0")


def test_unset_counter_counts_as_no_attempts(make_board):
    # A half-written try (BOOT_ORDER set, BOOT_B_LEFT missing) must not boot B.
    env = rauc_env("B A", {"A": 3})
    board = make_board(env=env)
    assert "BOOT_B_LEFT" not in board.env().read()
    console = board.start()
    assert boots(console, 1) == [("A", "2")]


def console_count(board, text):
    with open(board.console_log, encoding="utf-8") as f:
        return len(re.findall(re.escape(text), f.read()))
