"""scripts/grub.cfg on REAL GRUB (grub-emu): load_env, the string-compare decrement, save_env.

The grubenv lives on an ext2 disk image (GRUB's save_env cannot write through grub-emu's host
filesystem: "sparse file not allowed"). Each power-on copies the agent's grubenv into the
image, runs grub-emu with the fragment, and takes GRUB's saved grubenv back out; it must equal
what the Python twin boot_select predicts, and GRUB's chosen entry must be the predicted slot.
"""

import os
import re
import shutil
import subprocess

import pytest

from bootloader_iface import open_backend, uboot_rauc
from bootloader_iface.grubenv import GrubEnv

FRAGMENT = os.path.join(os.path.dirname(uboot_rauc.__file__), "scripts", "grub.cfg")
TOOLS = ("grub-emu", "mke2fs", "debugfs")

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) or os.path.exists("/usr/sbin/" + t) for t in TOOLS),
    reason="needs grub-emu and e2fsprogs (make sysdeps)",
)


def sbin(tool):
    return shutil.which(tool) or "/usr/sbin/" + tool


class GrubBoard:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.grubenv = str(tmp_path / "grubenv")  # the agent's view, copied in and out
        self.cmdline = str(tmp_path / "cmdline")
        GrubEnv(self.grubenv).create()
        (tmp_path / "device.map").write_text("(hd0) %s\n" % (tmp_path / "disk.img"))
        (tmp_path / "grub.cfg").write_text(
            "set prefix=(hd0)/boot/grub\nset root=hd0\nsource (host)%s\n"
            'echo "CHARGER-RESULT default=$default"\nhalt\n' % FRAGMENT
        )

    def control(self):
        return open_backend("grub", ("A", "B"), {"grubenv": self.grubenv, "cmdline": self.cmdline})

    def _run_grub(self):
        root = self.dir / "fsroot" / "boot" / "grub"
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.grubenv, root / "grubenv")
        image = str(self.dir / "disk.img")
        if os.path.exists(image):
            os.unlink(image)
        subprocess.run(
            [sbin("mke2fs"), "-q", "-t", "ext2", "-d", str(self.dir / "fsroot"), image, "4M"],
            check=True,
        )
        out = subprocess.run(
            ["grub-emu", "-d", str(self.dir), "-m", str(self.dir / "device.map"), "-r", "host"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        ).stdout.decode("utf-8", "replace")
        saved = subprocess.run(
            [sbin("debugfs"), "-R", "cat /boot/grub/grubenv", image],
            capture_output=True,
            check=True,
        ).stdout
        with open(self.grubenv, "wb") as f:
            f.write(saved)
        return out

    def boot(self):
        expected, predicted = uboot_rauc.boot_select(GrubEnv(self.grubenv).read())
        out = self._run_grub()
        if expected is None:  # the fragment reset the counters and rebooted: power on again
            assert "CHARGER-RESULT" not in out, out
            assert scheme(GrubEnv(self.grubenv).read()) == scheme(predicted)
            expected, predicted = uboot_rauc.boot_select(predicted)
            out = self._run_grub()
        found = re.findall(r"CHARGER-RESULT default=slot (\w+)", out)
        assert found == [expected], out[-2000:]
        assert scheme(GrubEnv(self.grubenv).read()) == scheme(predicted)
        with open(self.cmdline, "w") as f:
            f.write("charger.slot=%s\n" % expected)
        return expected


def scheme(env):
    return dict((k, v) for k, v in env.items() if k.startswith("BOOT_"))


@pytest.fixture
def grub_board(tmp_path):
    return GrubBoard(tmp_path)


def test_real_grub_tries_new_slot_counts_down_and_falls_back(grub_board):
    assert grub_board.boot() == "A"  # empty grubenv: the fragment's defaults
    boot = grub_board.control()
    boot.mark_good("A")
    boot.try_slot("B", attempts=2)
    assert [grub_board.boot() for _ in range(3)] == ["B", "B", "A"]
    boot = grub_board.control()
    assert (boot.booted_slot(), boot.primary_slot(), boot.attempts_left("B")) == ("A", "A", 0)


def test_real_grub_decrements_every_digit(grub_board):
    GrubEnv(grub_board.grubenv).write({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "9"})
    assert [grub_board.boot() for _ in range(9)] == ["A"] * 9
    assert grub_board.control().attempts_left("A") == 0
    assert grub_board.boot() == "B"


def test_real_grub_resets_counters_when_every_slot_is_spent(grub_board):
    GrubEnv(grub_board.grubenv).write({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"})
    assert grub_board.boot() == "B"
