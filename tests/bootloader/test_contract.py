"""One contract suite, run against every backend (see conftest.BOARDS).

Each test is a charger's life in miniature: the agent side calls the contract, the board
reboots through the bootloader side on the same bytes, and we check where it came up.
"""

import pytest

from agent.core.errors import BootEnvError, ConfigError


def test_fresh_board_boots_the_good_slot(board):
    boot = board.control()
    assert boot.booted_slot() == "A"
    assert boot.primary_slot() == "A"
    assert boot.attempts_left("A") > 0


def test_try_slot_boots_the_new_slot_next(board):
    boot = board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=2)
    assert boot.primary_slot() == "B"
    assert boot.attempts_left("B") == 2
    assert boot.attempts_left("A") > 0  # the fallback stays bootable
    assert board.reboot() == "B"
    assert board.control().booted_slot() == "B"
    assert board.control().attempts_left("B") == 1


def test_mark_good_commits_the_trial_slot(board):
    boot = board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=1)
    assert board.reboot() == "B"
    boot = board.control()
    boot.mark_good("B")
    assert boot.primary_slot() == "B"
    assert boot.attempts_left("B") > 0
    for _ in range(4):  # committed: it keeps booting B, however often
        assert board.reboot() == "B"
        board.control().mark_good("B")


def test_crash_looping_slot_falls_back_by_counting(board):
    """The new firmware never gets far enough to call mark_good or mark_bad."""
    boot = board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=2)
    assert [board.reboot() for _ in range(3)] == ["B", "B", "A"]
    boot = board.control()
    assert boot.booted_slot() == "A"
    assert boot.primary_slot() == "A"
    assert boot.attempts_left("B") == 0
    assert board.reboot() == "A"


def test_mark_bad_returns_to_the_good_slot(board):
    boot = board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=3)
    assert board.reboot() == "B"
    boot = board.control()
    boot.mark_bad("B")
    assert boot.primary_slot() == "A"
    assert boot.attempts_left("B") == 0
    assert board.reboot() == "A"


def test_try_slot_without_a_good_fallback_is_refused(board):
    boot = board.control()
    boot.mark_good("A")
    boot.mark_bad("A")
    with pytest.raises(BootEnvError):
        boot.try_slot("B", attempts=1)


def test_unknown_slot_and_bad_attempts_are_rejected(board):
    boot = board.control()
    with pytest.raises(ConfigError):
        boot.try_slot("C")
    with pytest.raises(ConfigError):
        boot.attempts_left("C")
    for attempts in (0, 10, -1, "2", True):
        with pytest.raises(ConfigError):
            boot.try_slot("B", attempts=attempts)
    assert boot.primary_slot() == "A"


def test_status_reports_booted_primary_and_attempts(board):
    boot = board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=1)
    status = boot.status()
    assert status["backend"] == board.name
    assert status["booted"] == "A"
    assert status["primary"] == "B"
    assert status["slots"]["B"] == {"attempts_left": 1, "bootable": True}
    assert status["slots"]["A"]["bootable"] is True


def test_state_survives_a_restart_of_the_agent(board):
    board.control().mark_good("A")
    board.control().try_slot("B", attempts=1)
    again = board.control()
    assert again.primary_slot() == "B"
    assert again.attempts_left("B") == 1
