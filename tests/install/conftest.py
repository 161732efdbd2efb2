"""A file-backed board for installer tests: slots A/B as files, the simulated bootloader."""

import json
import os

import pytest

from agent import config as config_mod
from bootloader_iface import open_from_config
from tests.bundle.factory import HW, MODEL

BOARD_TOML = """\
[device]
id = "cp-0001"
model = "%(model)s"
hardware_revision = "%(hw)s"

[slots.A]
rootfs = "slotA.img"
[slots.B]
rootfs = "slotB.img"

[bootloader]
backend = "simulated"
state = "boot-env.json"
booted = "A"

[trust]
root = "%(root)s"

[state]
dir = "state"

[download]
retries = 2
backoff_s = 0.01
"""


class FileBoard:
    def __init__(self, directory, root_path):
        self.dir = str(directory)
        self.config_path = os.path.join(self.dir, "agent.toml")
        with open(self.config_path, "w") as f:
            f.write(BOARD_TOML % {"model": MODEL, "hw": HW, "root": root_path})
        self.slot_a = os.path.join(self.dir, "slotA.img")
        self.slot_b = os.path.join(self.dir, "slotB.img")
        with open(self.slot_a, "wb") as f:
            f.write(b"factory firmware 1.0")
        with open(self.slot_b, "wb") as f:
            f.write(b"old firmware 0.9")
        # Factory state: A is good and primary, B holds nothing bootable.
        with open(os.path.join(self.dir, "boot-env.json"), "w") as f:
            json.dump({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}, f)

    def config(self):
        return config_mod.load(self.config_path)

    def boot(self):
        return open_from_config(self.config())

    def read_slot(self, slot):
        with open(self.slot_a if slot == "A" else self.slot_b, "rb") as f:
            return f.read()


@pytest.fixture
def board(tmp_path):
    def make(root_path):
        return FileBoard(tmp_path / "board", root_path)

    (tmp_path / "board").mkdir()
    return make
