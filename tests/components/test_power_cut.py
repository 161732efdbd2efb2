"""A power cut at every step of an MCU write (each page erase, each 256-byte block, the
read-back) ends in a charger whose MCU runs one release: resuming the trial writes the new
image again, a rollback writes the kept old one. Real driver, real emulator, the agent's
own MCU steps (agent/control/components.py) with their decisions and records."""

import hashlib
import json
import os

import pytest
import serial

from agent import config as config_mod
from agent.control import components as mcu_steps
from agent.core.errors import UpdateError
from agent.state.components import ComponentStore
from hil.emulators import mcu_image
from hil.emulators.stm32_rom import Stm32Rom

SIZE = 1024  # one erase, four blocks to write, four to read back
OLD, NEW = mcu_image.build("1.0.0", size=SIZE), mcu_image.build("2.0.0", size=SIZE)


class SerialStack:
    """What the charging stack does for the agent: asks the MCU's application its version."""

    def __init__(self, port):
        self.port = port

    def request(self, cmd, **fields):
        try:
            with serial.Serial(self.port, 115200, timeout=0.3, exclusive=True) as p:
                p.write(b"VERSION\n")
                reply = p.readline().decode().strip()
        except (OSError, serial.SerialException):
            return {"ok": False}
        return {"ok": reply.startswith("VERSION "), "version": reply[8:]}


def board(tmp_path, chip):
    state = tmp_path / "state"
    store = ComponentStore(str(state))
    for slot, image, version in (("A", OLD, "1.0.0"), ("B", NEW, "2.0.0")):
        store.prepare(slot)
        with open(store.image_path(slot, "safety"), "wb") as f:
            f.write(image)
        mcu = {"id": "safety", "protocol": "stm32-rom", "address": 0x08000000,
               "version": version, "sha256": hashlib.sha256(image).hexdigest()}  # fmt: skip
        with open(os.path.join(store.dir, "%s.json" % slot), "w") as f:
            json.dump({"components": {"safety": version}, "mcus": {"safety": mcu}}, f)
    store.set_running("safety", "1.0.0", True)
    lines = chip.lines_dir
    (tmp_path / "agent.toml").write_text(
        """
[device]
id = "cp-1"
model = "M"
hardware_revision = "r"
[slots.A]
rootfs = "a.img"
[slots.B]
rootfs = "b.img"
[bootloader]
backend = "simulated"
[state]
dir = "%s"
[components.safety]
protocol = "stm32-rom"
port = "%s"
boot0 = "gpio:%s/boot0"
nreset = "gpio:%s/nrst"
timeout_s = 0.1
retries = 0
start_timeout_s = 2
"""
        % (state, chip.port, lines, lines)
    )
    return config_mod.load(str(tmp_path / "agent.toml")), store


def steps_of_a_write(tmp_path):
    """How many flash operations one write of NEW is (erase batches + blocks)."""
    with Stm32Rom(lines_dir=str(tmp_path / "count")) as chip:
        chip.flash[:SIZE] = OLD
        chip.reset()
        os.makedirs(tmp_path / "c")
        cfg, _ = board(tmp_path / "c", chip)
        mcu_steps.flash(cfg, "B", SerialStack(chip.port))
        return [e for e in chip.events if e[0] in ("erase", "write")]


@pytest.mark.parametrize("then", ["resume-trial", "roll-back"])
def test_power_cut_at_every_mcu_write_step_ends_on_one_release(tmp_path, then):
    ops = steps_of_a_write(tmp_path)
    assert len(ops) == 1 + SIZE // 256
    for k in range(len(ops) + 1):  # k == len(ops): the cut lands in the read-back
        work = tmp_path / ("%s-%d" % (then, k))
        os.makedirs(work)
        with Stm32Rom(lines_dir=str(work / "lines")) as chip:
            chip.flash[:SIZE] = OLD
            chip.reset()
            cfg, store = board(work, chip)
            stack = SerialStack(chip.port)
            seen = []

            def cut(event, k=k, chip=chip, seen=seen):
                if event[0] in ("erase", "write", "read"):
                    seen.append(event)
                    if len(seen) == k + 1:
                        chip.power(False)

            chip.hook = cut
            with pytest.raises(UpdateError):
                mcu_steps.flash(cfg, "B", stack)
            assert store.running()["safety"]["version"] is None  # known to be unfinished
            chip.hook = None
            chip.power(True)
            if then == "resume-trial":
                mcu_steps.flash(cfg, "B", stack)
                want = "2.0.0"
            else:
                mcu_steps.restore(cfg, "A", stack)
                want = "1.0.0"
            assert stack.request("component")["version"] == want, k
            assert store.running()["safety"]["version"] == want
            assert mcu_image.parse(chip.flash)["version"] == want
