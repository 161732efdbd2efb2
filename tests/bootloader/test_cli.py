"""`charger-update boot ...` against a board config (simulated and real U-Boot env)."""

import json

import pytest

from agent.cli import main
from agent.state.atomic import write_json_atomic
from bootloader_iface.uboot_env import UBootEnv
from tests.bootloader.conftest import BASE_ENV, fw_printenv, write_fw_config

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
%s
"""


@pytest.fixture
def sim_config(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG % 'backend = "simulated"\nstate = "boot-env.json"\nbooted = "A"')
    return str(path)


def run(config, *argv):
    return main(["--config", config, "boot", *argv])


def test_status_json_shows_slots_versions_and_primary(sim_config, tmp_path, capsys):
    (tmp_path / "state").mkdir()
    slots = {"slots": {"A": {"version": "1.0.0"}}}
    write_json_atomic(str(tmp_path / "state" / "slots.json"), slots)
    assert run(sim_config, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["backend"] == "simulated"
    assert status["booted"] == "A"
    assert status["primary"] == "A"
    assert status["slots"]["A"] == {"attempts_left": 3, "bootable": True, "version": "1.0.0"}
    assert status["slots"]["B"]["version"] is None


def test_try_mark_bad_and_mark_good_change_the_primary(sim_config, capsys):
    assert run(sim_config, "mark-good") == 0  # the booted slot, A
    assert run(sim_config, "try", "B", "--attempts", "2") == 0
    assert "falls back to A" in capsys.readouterr().out
    run(sim_config, "status", "--json")
    status = json.loads(capsys.readouterr().out)
    assert status["primary"] == "B"
    assert status["slots"]["B"]["attempts_left"] == 2
    assert run(sim_config, "mark-bad", "B") == 0
    run(sim_config, "status")
    out = capsys.readouterr().out
    assert "bootloader backend: simulated" in out
    row_a = [line for line in out.splitlines() if line.startswith("A ")][0]
    assert row_a.split() == ["A", "*", "*", "3", "-"]
    assert run(sim_config, "mark-good", "B") == 0
    capsys.readouterr()
    run(sim_config, "status", "--json")
    assert json.loads(capsys.readouterr().out)["primary"] == "B"


def test_errors_give_exit_codes_and_hints(sim_config, capsys):
    assert run(sim_config, "try", "C") == 20  # ConfigError: unknown slot
    assert "hint" in capsys.readouterr().err
    assert run(sim_config, "try", "B", "--attempts", "12") == 20
    capsys.readouterr()
    assert run(sim_config) == 2  # `boot` alone prints usage


def test_uboot_board_via_cli_is_visible_to_fw_printenv(tmp_path, capsys):
    cfg, _ = write_fw_config(tmp_path, True)
    UBootEnv(cfg).format(dict(BASE_ENV, BOOT_ORDER="A B", BOOT_A_LEFT="2", BOOT_B_LEFT="3"))
    (tmp_path / "cmdline").write_text("quiet charger.slot=A\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        CONFIG % 'backend = "uboot-rauc"\nfw_env_config = "%s"\ncmdline = "cmdline"' % cfg
    )
    assert run(str(config), "mark-good") == 0
    assert run(str(config), "try", "B") == 0
    env = fw_printenv(cfg)
    assert (env["BOOT_ORDER"], env["BOOT_A_LEFT"], env["BOOT_B_LEFT"]) == ("B A", "3", "1")
    assert env["bootcmd"] == BASE_ENV["bootcmd"]


def test_status_with_unknown_booted_slot_still_reports_the_env(tmp_path, capsys):
    cfg, _ = write_fw_config(tmp_path, False)
    UBootEnv(cfg).format(dict(BASE_ENV, BOOT_ORDER="B A"))
    (tmp_path / "cmdline").write_text("quiet root=/dev/mmcblk0p2\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        CONFIG % 'backend = "uboot-rauc"\nfw_env_config = "%s"\ncmdline = "cmdline"' % cfg
    )
    assert run(str(config), "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["booted"] is None
    assert "charger.slot" in status["booted_error"]
    assert status["primary"] == "B"
    assert run(str(config), "mark-good") == 21  # mark-good without SLOT needs the booted slot


def test_corrupt_env_is_exit_21_not_a_guess(tmp_path, capsys):
    cfg, image = write_fw_config(tmp_path, True)  # never written: all 0xFF
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG % 'backend = "uboot-rauc"\nfw_env_config = "%s"' % cfg)
    assert run(str(config), "status") == 21
    assert "bad CRC" in capsys.readouterr().err


def test_unknown_backend_is_a_config_error(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG % 'backend = "lilo"')
    assert run(str(config), "status") == 20
    assert "uboot-rauc" in capsys.readouterr().err
