"""Real U-Boot in QEMU and the Linux-side env tools agree on the env in pflash, both ways.

Skipped (with the reason) where QEMU >= 8, u-boot-qemu or libubootenv-tool are missing;
`make test` installs them first (`make qemu-deps`, `make sysdeps`), so CI runs these.
"""

import shutil
import subprocess

import pytest

from agent.core.errors import BootEnvError
from hil.flash_env import format_vars, script_vars
from hil.qemu import board_env, missing_prerequisites

MISSING = missing_prerequisites()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="QEMU U-Boot rig unavailable: %s (run make qemu-deps)" % "; ".join(MISSING),
)

# Spaces, quotes, =, $ and ; must arrive as written: U-Boot stores the raw string.
AWKWARD = 'charger "CP-0001"; price=0.39 ${currency} & end'


def test_board_defaults_match_uboot_builtin_env(make_board):
    # Our env is written from scratch (U-Boot will not merge its defaults into it), so the
    # board variables we carry must be exactly U-Boot's own.
    board = make_board()  # blank flash1: U-Boot uses its built-in env
    with pytest.raises(BootEnvError):
        board.env().read()
    board.start()
    board.console.expect("bad CRC, using default environment", timeout=20)
    board.console.expect("Hit any key to stop autoboot", timeout=20)
    board.console.send(" ")
    board.wait_prompt()
    builtin = dict(line.split("=", 1) for line in board.run("printenv").splitlines() if "=" in line)
    ours = script_vars("qemu_arm64_board.env")
    del ours["bootdelay"], ours["bootcmd"]  # deliberately ours
    assert dict((k, builtin.get(k)) for k in ours) == ours


def test_env_written_by_fw_setenv_is_loaded_by_uboot(make_board):
    board = make_board(
        env=board_env(CHARGER_NOTE=AWKWARD, BOOT_ORDER="B A", bootcmd="echo BOOTCMD FROM FLASH")
    )
    board.start()
    board.console.expect(r"Loading Environment from Flash\.\.\. OK", timeout=20)
    board.console.expect("BOOTCMD FROM FLASH", timeout=20)
    board.wait_prompt()
    assert board.printenv("CHARGER_NOTE") == AWKWARD
    assert board.printenv("BOOT_ORDER") == "B A"
    assert board.printenv("NOT_WRITTEN") is None


def test_saveenv_by_uboot_is_read_by_fw_printenv(make_board):
    board = make_board(env=board_env(BOOT_B_LEFT="3", KEEP_ME="untouched"))
    board.start()
    board.wait_prompt()
    out = board.run('setenv agent_note "saved by U-Boot"; setenv BOOT_B_LEFT; saveenv')
    assert out.rstrip().endswith("OK"), out
    board.stop()
    env = board.env().read()
    assert env["agent_note"] == "saved by U-Boot"
    assert "BOOT_B_LEFT" not in env
    assert env["KEEP_ME"] == "untouched" and env["stdout"] == "pl011@9000000"


def test_fw_setenv_after_uboot_saveenv_wins_on_next_boot(make_board):
    # Both writers in turn on the same sector: U-Boot saves, Linux side edits, U-Boot reads.
    board = make_board(env=board_env())
    board.start()
    board.wait_prompt()
    board.run("setenv BOOT_A_LEFT 1; saveenv")
    board.stop()
    board.env().write({"BOOT_A_LEFT": "3", "CHARGER_NOTE": AWKWARD})
    board.start()
    board.wait_prompt()
    assert board.printenv("BOOT_A_LEFT") == "3"
    assert board.printenv("CHARGER_NOTE") == AWKWARD


def test_uboot_import_eats_backslashes_the_tools_keep(make_board):
    # A real interop trap (U-Boot's himport_r treats "\\" as an escape when it loads the env,
    # libubootenv writes and reads values verbatim): a backslash survives only doubled.
    board = make_board(env=board_env(ONE="a\\nb", TWO="a\\\\nb"))
    assert board.env().read()["ONE"] == "a\\nb"  # the tools keep it
    board.start()
    board.wait_prompt()
    assert board.printenv("ONE") == "anb"
    assert board.printenv("TWO") == "a\\nb"


def test_env_image_made_by_mkenvimage_boots(make_board, tmp_path):
    # The third writer of this format (u-boot-tools): an image built offline, e.g. in a
    # factory flashing step, is loaded by U-Boot and read by fw_printenv.
    if not shutil.which("mkenvimage"):
        pytest.skip("mkenvimage missing (package u-boot-tools)")
    source = tmp_path / "env.txt"
    source.write_text(format_vars(board_env(FACTORY="line-3", bootcmd="echo FACTORY ENV")))
    image = tmp_path / "env.bin"
    subprocess.run(["mkenvimage", "-s", "0x40000", "-o", str(image), str(source)], check=True)
    board = make_board(env_image=str(image))
    assert board.env().read()["FACTORY"] == "line-3"
    console = board.start()
    console.expect("FACTORY ENV", timeout=20)
    board.wait_prompt()
    assert board.printenv("FACTORY") == "line-3"
