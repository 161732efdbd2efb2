"""Boards for the bootloader tests: real env files read by the real tools, and a reboot().

Each Board holds one backend over its real store and a `reboot()` that runs that scheme's
bootloader side (the pure boot_select twin of the sample scripts) on the same store and writes
the kernel command line the booted slot would get: the agent side and the boot side meet only
through the bytes on disk, as on a charger.
"""

import os
import shutil
import subprocess

import pytest

from bootloader_iface import open_backend, uboot_bootcount, uboot_rauc
from bootloader_iface.grubenv import GrubEnv
from bootloader_iface.uboot_env import UBootEnv

SLOTS = ("A", "B")
ENV_SIZE = 0x4000
BASE_ENV = {"bootcmd": "run charger_boot", "stdin": "serial", "stdout": "serial"}
ALTBOOTCMD = (
    'if test "${boot_slot}" = A; then setenv boot_slot B; else setenv boot_slot A; fi; '
    "setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd"
)

AB_SCRIPT = r"""#!/bin/sh
# A toy OEM A/B tool: state in files under $1, same meaning as BOOT_ORDER/BOOT_x_LEFT.
set -e
D=$1; cmd=$2; slot=$3
other() { if [ "$1" = A ]; then echo B; else echo A; fi; }
case $cmd in
  booted) cat "$D/booted" ;;
  primary)
    for s in $(cat "$D/order"); do
      if [ "$(cat "$D/left_$s")" -gt 0 ]; then echo "$s"; exit 0; fi
    done
    set -- $(cat "$D/order"); echo "$1" ;;
  attempts_left) cat "$D/left_$slot" ;;
  try)
    o=$(other "$slot")
    if [ "$(cat "$D/left_$o")" -le 0 ]; then echo "no good fallback $o" >&2; exit 3; fi
    echo "$4" > "$D/left_$slot"; echo "$slot $o" > "$D/order" ;;
  mark_good) echo 3 > "$D/left_$slot"; echo "$slot $(other "$slot")" > "$D/order" ;;
  mark_bad) echo 0 > "$D/left_$slot"; echo "$(other "$slot") $slot" > "$D/order" ;;
  *) echo "usage" >&2; exit 2 ;;
esac
"""


def have(tool):
    if shutil.which(tool) is None:
        pytest.fail("%s is missing: run `make sysdeps`" % tool)


def write_fw_config(tmp_path, redundant, size=ENV_SIZE, name="uboot.env"):
    image = tmp_path / name
    copies = 2 if redundant else 1
    image.write_bytes(b"\xff" * size * copies)
    cfg = tmp_path / ("fw_env_%s.config" % ("redundant" if redundant else "single"))
    lines = ["%s 0x%x 0x%x" % (image, i * size, size) for i in range(copies)]
    cfg.write_text("\n".join(lines) + "\n")
    return str(cfg), str(image)


def fw_printenv(cfg, *names):
    """Variables as fw_printenv sees them (values without newlines), or raises on failure."""
    have("fw_printenv")
    out = subprocess.run(
        ["fw_printenv", "-c", cfg, *names], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def fw_printenv_value(cfg, name):
    have("fw_printenv")
    out = subprocess.run(
        ["fw_printenv", "-c", cfg, "-n", "--", name], capture_output=True, check=True
    ).stdout
    assert out.endswith(b"\n")
    return out[:-1].decode("utf-8", "surrogateescape")


class Board:
    def __init__(self, name, options, read_env, write_env, select):
        self.name = name
        self.options = options
        self.read_env = read_env
        self.write_env = write_env
        self.select = select
        self.cmdline = options["cmdline"]

    def control(self):
        """A fresh backend instance, as a newly started agent would open it."""
        return open_backend(self.name, SLOTS, self.options)

    def reboot(self):
        """Power-on: the bootloader side picks a slot, saves the env, boots it."""
        for _ in range(3):
            slot, env = self.select(self.read_env())
            self.write_env(env)
            if slot is not None:
                with open(self.cmdline, "w") as f:
                    f.write("console=ttyS0 root=/dev/slot%s charger.slot=%s\n" % (slot, slot))
                return slot
        raise AssertionError("no bootable slot")


def _uboot_rauc_board(tmp_path, redundant):
    cfg, _ = write_fw_config(tmp_path, redundant)
    env = UBootEnv(cfg)
    env.format(dict(BASE_ENV, BOOT_ORDER="A B", BOOT_A_LEFT="3", BOOT_B_LEFT="3"))
    options = {"fw_env_config": cfg, "cmdline": str(tmp_path / "cmdline")}
    return Board(
        "uboot-rauc", options, env.read, lambda e: env.write(e), lambda e: uboot_rauc.boot_select(e)
    )


def _uboot_bootcount_board(tmp_path):
    cfg, _ = write_fw_config(tmp_path, True)
    env = UBootEnv(cfg)
    env.format(dict(BASE_ENV, boot_slot="A", altbootcmd=ALTBOOTCMD, bootlimit="3"))
    options = {"fw_env_config": cfg, "cmdline": str(tmp_path / "cmdline")}
    return Board(
        "uboot-bootcount",
        options,
        env.read,
        lambda e: env.write(e),
        lambda e: uboot_bootcount.boot_select(e, SLOTS),
    )


def _grub_board(tmp_path):
    have("grub-editenv")
    path = str(tmp_path / "grubenv")
    subprocess.run(["grub-editenv", path, "create"], check=True)
    env = GrubEnv(path)
    options = {"grubenv": path, "cmdline": str(tmp_path / "cmdline")}
    return Board("grub", options, env.read, lambda e: env.write(e), uboot_rauc.boot_select)


def _simulated_board(tmp_path):
    options = {"state": str(tmp_path / "boot-env.json"), "cmdline": str(tmp_path / "cmdline")}
    board = Board("simulated", options, None, None, None)
    sim = board.control()
    board.read_env, board.write_env = sim.env.read, lambda e: sim.env.write(e)
    board.select = uboot_rauc.boot_select

    def reboot():
        slot = sim.power_on()
        with open(board.cmdline, "w") as f:
            f.write("charger.slot=%s\n" % slot)  # unused: the booted file wins
        return slot

    board.reboot = reboot
    return board


def _command_board(tmp_path):
    state = tmp_path / "ab-state"
    state.mkdir()
    script = tmp_path / "ab.sh"
    script.write_text(AB_SCRIPT)
    os.chmod(script, 0o755)
    (state / "order").write_text("A B\n")
    for slot in SLOTS:
        (state / ("left_" + slot)).write_text("3\n")
    base = "%s %s " % (script, state)
    commands = dict((c, base + c + " {slot}") for c in ("attempts_left", "mark_good", "mark_bad"))
    commands.update(booted=base + "booted", primary=base + "primary")
    commands["try"] = base + "try {slot} {attempts}"
    options = {"commands": commands, "cmdline": str(tmp_path / "cmdline")}

    def read_env():
        env = {"BOOT_ORDER": (state / "order").read_text().strip()}
        for slot in SLOTS:
            env["BOOT_%s_LEFT" % slot] = (state / ("left_" + slot)).read_text().strip()
        return env

    def write_env(env):
        (state / "order").write_text(env["BOOT_ORDER"] + "\n")
        for slot in SLOTS:
            (state / ("left_" + slot)).write_text(env["BOOT_%s_LEFT" % slot] + "\n")

    board = Board("command", options, read_env, write_env, uboot_rauc.boot_select)
    orig = board.reboot

    def reboot():
        slot = orig()
        (state / "booted").write_text(slot + "\n")
        return slot

    board.reboot = reboot
    return board


BOARDS = {
    "simulated": _simulated_board,
    "uboot-rauc-single": lambda p: _uboot_rauc_board(p, False),
    "uboot-rauc-redundant": lambda p: _uboot_rauc_board(p, True),
    "uboot-bootcount": _uboot_bootcount_board,
    "grub": _grub_board,
    "command": _command_board,
}


@pytest.fixture(params=sorted(BOARDS))
def board(request, tmp_path):
    """A board of every backend, powered on once: slot A booted."""
    b = BOARDS[request.param](tmp_path)
    assert b.reboot() == "A"
    return b
