"""`charger-update boot` commands that could brick a board or leave the floor low (issue 11
#6, #22), on the simulated board through agent.cli.main."""

import json

import pytest

from agent.cli import main
from agent.core.errors import BootEnvError
from agent.state.slotstate import SlotState

CONFIG = """
[device]
id = "cp-0001"
model = "wallbox-22"
hardware_revision = "r2"
[slots.A]
rootfs = "slotA.img"
[slots.B]
rootfs = "slotB.img"
[state]
dir = "state"
[bootloader]
backend = "simulated"
state = "boot-env.json"
booted = "A"
"""


@pytest.fixture
def fresh_board(tmp_path):
    """Factory state: A holds the system and is primary, B was never installed."""
    (tmp_path / "agent.toml").write_text(CONFIG)
    env = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    (tmp_path / "boot-env.json").write_text(json.dumps(env))
    SlotState(str(tmp_path / "state")).set_good("A", "1.0.0", 1)
    return tmp_path


def boot(board, *argv):
    return main(["--config", str(board / "agent.toml"), "boot", *argv])


def env(board):
    return json.loads((board / "boot-env.json").read_text())


def test_mark_bad_of_the_booted_slot_with_an_empty_other_slot_is_refused(fresh_board, capsys):
    """#22: marking A bad would make the boot script reset the counters and boot B, which
    holds nothing: refused as `boot try` refuses, the env untouched."""
    before = env(fresh_board)
    assert boot(fresh_board, "mark-bad", "A") == BootEnvError.exit_code
    err = capsys.readouterr().err
    assert "no other slot holds an installed system" in err and "never installed" in err
    assert env(fresh_board) == before


def test_mark_bad_with_default_counters_of_an_empty_slot_is_refused(fresh_board):
    """Even when the env gives B attempts (U-Boot fills missing counters with 3), B holds no
    installed system: still refused."""
    (fresh_board / "boot-env.json").write_text(json.dumps({"BOOT_ORDER": "A B"}))
    assert boot(fresh_board, "mark-bad", "A") == BootEnvError.exit_code


def test_mark_bad_of_the_booted_slot_falls_back_to_an_installed_slot(fresh_board):
    """With B installed and bootable, marking the running A bad is a manual rollback."""
    SlotState(str(fresh_board / "state")).set_good("B", "0.9.0", 1)
    assert boot(fresh_board, "try", "B", "--attempts", "1") == 0
    assert boot(fresh_board, "mark-bad", "A") == 0
    assert env(fresh_board)["BOOT_ORDER"] == "B A" and env(fresh_board)["BOOT_A_LEFT"] == "0"
    assert SlotState(str(fresh_board / "state")).slot("A")["state"] == "bad"


def test_mark_bad_of_the_other_slot_is_always_allowed(fresh_board):
    assert boot(fresh_board, "mark-bad", "B") == 0
    assert env(fresh_board)["BOOT_ORDER"] == "A B"


def test_mark_good_commits_the_slot_and_raises_the_floor(fresh_board):
    """#6: the floor is raised in slots.json, in STATE/floors.json and in the boot env."""
    state = SlotState(str(fresh_board / "state"))
    data = state.load()
    data["slots"]["B"] = {"state": "installed", "version": "2.0.0", "security_version": 7}
    (fresh_board / "state" / "slots.json").write_text(json.dumps(data))
    assert boot(fresh_board, "mark-good", "B") == 0
    assert state.slot("B")["state"] == "good" and state.load()["security_version"] == 7
    assert env(fresh_board)["CHARGER_SECURITY_FLOOR"] == "7"
    floors = json.loads((fresh_board / "state" / "floors.json").read_text())
    assert floors["security_version"] == 7
