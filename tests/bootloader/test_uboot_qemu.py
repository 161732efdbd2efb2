"""scripts/boot.cmd.rauc on the REAL U-Boot (Debian u-boot-qemu, qemu_arm64) in QEMU.

The agent side (UBootRaucControl) writes the pflash env; U-Boot runs the sample script from the
env, counts down with setexpr and saveenv, and "boots" a slot (echo + poweroff). After every
boot the env U-Boot saved must equal what the Python twin boot_select predicts, and the slot on
the console must be the one it predicted. Skipped where QEMU or u-boot-qemu is not installed
(the HIL issue's `make` target installs them); needs QEMU >= 8 for saveenv to pflash.
"""

import os
import shlex
import shutil

import pytest

from bootloader_iface import open_backend, uboot_bootcount, uboot_rauc
from bootloader_iface.uboot_env import UBootEnv
from hil.qemu import QemuUBoot

UBOOT = "/usr/lib/u-boot/qemu_arm64/u-boot.bin"
QEMU = "qemu-system-aarch64"
SCRIPT = os.path.join(os.path.dirname(uboot_rauc.__file__), "scripts", "boot.cmd.rauc")
MARK = "CHARGER-BOOTED"

pytestmark = pytest.mark.skipif(
    not (shutil.which(QEMU) and os.path.exists(UBOOT)), reason="needs qemu-system-arm, u-boot-qemu"
)


def scheme_vars(env):
    return dict((k, v) for k, v in env.items() if k.startswith("BOOT_"))


class QemuBoard:
    """Debian's U-Boot in QEMU (hil.qemu.QemuUBoot) with our env written by UBootEnv."""

    def __init__(self, tmp_path):
        self.qemu = QemuUBoot(str(tmp_path / "qemu"))  # blank env in flash1
        self.flash = self.qemu.flash1
        self.cfg = str(tmp_path / "fw_env.config")
        with open(self.cfg, "w") as f:
            f.write("%s 0x0 0x40000\n" % self.flash)
        self.cmdline = str(tmp_path / "cmdline")
        self.env = UBootEnv(self.cfg)
        with open(SCRIPT) as f:
            script = f.read()
        boot = "echo %s ${bootargs}; poweroff" % MARK
        self.env.format(
            {
                "bootcmd": "run charger_script",
                "charger_script": script,
                "bootdelay": "0",
                "stdin": "serial",
                "stdout": "serial",
                "stderr": "serial",
                "charger_boot_A": boot,
                "charger_boot_B": boot,
                "BOOT_ORDER": "A B",
                "BOOT_A_LEFT": "3",
                "BOOT_B_LEFT": "3",
            }
        )

    def control(self):
        return open_backend(
            "uboot-rauc", ("A", "B"), {"fw_env_config": self.cfg, "cmdline": self.cmdline}
        )

    def power_on(self):
        """Run U-Boot until the script 'boots' a slot and powers off; return the console."""
        console = self.qemu.start()
        try:
            self.qemu.proc.wait(timeout=60)  # the boot command ends in poweroff
            console.wait_closed(30)  # everything QEMU printed has been read
            return console.text()
        finally:
            self.qemu.stop()

    def boot(self, reset=None):
        """Power on, check U-Boot did what the twin predicts, record the booted slot. reset:
        the SoC reset cause the board's code hands the script (charger_reset) this boot."""
        bootcmd = "run charger_script"
        if reset:
            bootcmd = "setenv charger_reset %s; %s" % (reset, bootcmd)
        self.env.write({"bootcmd": bootcmd})
        before = self.env.read()
        expected, predicted = uboot_rauc.boot_select(before, reset=reset)
        resets = 0
        while expected is None:  # the script resets the counters and the board once
            expected, predicted = uboot_rauc.boot_select(predicted)
            resets += 1
        console = self.power_on()
        lines = [line for line in console.splitlines() if line.startswith(MARK)]
        assert len(lines) == 1, console[-2000:]
        slot = lines[0].split("charger.slot=")[1].split()[0]
        assert slot == expected, console[-2000:]
        assert console.count("no slot has attempts left") == resets
        # The scheme's variables as predicted (U-Boot also rewrites stdin/stdout on saveenv).
        after = self.env.read()
        assert scheme_vars(after) == scheme_vars(predicted)
        assert (" charger.reset=%s" % reset in lines[0]) == bool(reset), lines[0]
        with open(self.cmdline, "w") as f:
            f.write(lines[0] + "\n")
        return slot


@pytest.fixture
def qemu_board(tmp_path):
    return QemuBoard(tmp_path)


def test_real_uboot_tries_new_slot_counts_down_and_falls_back(qemu_board):
    assert qemu_board.boot() == "A"
    boot = qemu_board.control()
    assert boot.booted_slot() == "A"
    boot.mark_good("A")
    boot.try_slot("B", attempts=2)
    # B never reports healthy: two attempts, then U-Boot goes back to A by itself.
    assert [qemu_board.boot() for _ in range(3)] == ["B", "B", "A"]
    boot = qemu_board.control()
    assert boot.booted_slot() == "A"
    assert boot.attempts_left("B") == 0
    assert boot.primary_slot() == "A"


def test_real_uboot_ends_a_trial_at_once_after_a_watchdog_reset(qemu_board):
    """The board's reset cause reaches the script: a watchdog reset of the slot on trial
    takes its last attempts away; a power loss does not (the trial resumes on B)."""
    assert qemu_board.boot() == "A"
    boot = qemu_board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=3)
    assert qemu_board.boot("power-on") == "B"
    assert qemu_board.boot("power-on") == "B"  # a power cut in the trial: B again
    assert qemu_board.boot("watchdog") == "A"  # B hung: back to A, one attempt unused
    assert qemu_board.control().attempts_left("B") == 0


def test_real_uboot_spares_a_trial_whose_slot_never_ran_from_a_watchdog_reset(qemu_board):
    """try_slot(B) ran on A, then A hung on its way down and the watchdog reset the board:
    B never ran (BOOT_LAST is A), so the reset costs its trial nothing; once B has run, a
    watchdog reset ends the trial."""
    assert qemu_board.boot() == "A"
    boot = qemu_board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=3)
    assert qemu_board.boot("watchdog") == "B"
    assert qemu_board.control().attempts_left("B") == 2
    assert qemu_board.boot("panic") == "A"
    assert qemu_board.control().attempts_left("B") == 0


def test_real_uboot_keeps_a_committed_slot(qemu_board):
    assert qemu_board.boot() == "A"
    qemu_board.control().mark_good("A")
    qemu_board.control().try_slot("B", attempts=1)
    assert qemu_board.boot() == "B"
    qemu_board.control().mark_good("B")
    assert qemu_board.boot() == "B"
    assert qemu_board.control().attempts_left("B") == 2


def test_real_uboot_resets_counters_when_every_slot_is_spent(qemu_board):
    qemu_board.env.write({"BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0", "BOOT_ORDER": "B A"})
    assert qemu_board.boot() == "B"


def bootcount_script_env():
    """The variables scripts/boot.cmd.bootcount sets (its `setenv NAME 'VALUE'` lines)."""
    env = {}
    with open(os.path.join(os.path.dirname(SCRIPT), "boot.cmd.bootcount")) as f:
        for line in f:
            if line.startswith("setenv "):
                words = shlex.split(line)
                env[words[1]] = " ".join(words[2:])
    return env


def test_real_uboot_runs_the_bootcount_altbootcmd(qemu_board):
    """This U-Boot has no bootcount support, so we make it run altbootcmd from `preboot`, as
    autoboot does once bootcount > bootlimit, and check the switch matches the Python twin."""
    env = dict(qemu_board.env.read(), **bootcount_script_env())
    env.update(boot_slot="B", upgrade_available="1", bootcount="2", bootlimit="2")
    env["preboot"] = "run altbootcmd"
    qemu_board.env.format(env)
    slot, predicted = uboot_bootcount.boot_select(env)
    assert slot == "A"
    console = qemu_board.power_on()
    assert "%s charger.slot=A" % MARK in console, console[-2000:]
    after = qemu_board.env.read()
    for var in ("boot_slot", "upgrade_available", "bootcount"):
        assert after[var] == predicted[var]


@pytest.mark.parametrize(
    "bootcount, reset, slot",
    [("2", "watchdog", "A"), ("2", "panic", "A"), ("2", "power-on", "B"), ("1", "watchdog", "B"),
     ("2", None, "B")],
)  # fmt: skip
def test_real_uboot_runs_the_bootcount_bootcmd_with_a_reset_cause(qemu_board, bootcount, reset,
                                                                   slot):  # fmt: skip
    """The sample bootcmd on real U-Boot: after a watchdog or panic reset of the slot on trial
    that already ran (bootcount > 1 once U-Boot has counted this boot: this build does not
    count, so the env holds the counted value) it runs altbootcmd at once; otherwise it boots
    the slot and passes the cause on as charger.reset=. The twin predicts the same."""
    env = dict(qemu_board.env.read(), **bootcount_script_env())
    env.update(boot_slot="B", upgrade_available="1", bootcount=bootcount, bootlimit="3")
    env.pop("charger_reset", None)
    if reset:
        env["preboot"] = "setenv charger_reset %s" % reset  # what the board's code does
    qemu_board.env.format(env)
    before = dict(env, bootcount=str(int(bootcount) - 1))  # the twin counts this boot itself
    expected, predicted = uboot_bootcount.boot_select(before, reset=reset)
    assert expected == slot
    console = qemu_board.power_on()
    booted = [line for line in console.splitlines() if line.startswith(MARK)]
    assert len(booted) == 1 and "charger.slot=%s" % slot in booted[0], console[-2000:]
    assert ("charger.reset=%s" % reset in booted[0]) == bool(reset), booted[0]
    after = qemu_board.env.read()
    for var in ("boot_slot", "upgrade_available", "bootcount"):
        assert after[var] == predicted[var], (var, after[var], predicted[var])
