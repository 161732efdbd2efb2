"""A charger's MCU side for the component tests: the agent's config and state dir with one
MCU (on an emulator's pty) and the images of two releases kept with slots A and B, as the
factory and an install leave them (docs/components.md, provisioning)."""

import hashlib
import json
import os

import serial

from agent import config as config_mod
from agent.state.components import ComponentStore

CONFIG = """
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
dir = "%(state)s"
[components.%(name)s]
protocol = "%(protocol)s"
port = "%(port)s"
%(extra)s
"""


def provision(workdir, name, protocol, port, releases, running, extra=""):
    """releases: {slot: (version, image bytes)}; running: the MCU's version at the start
    (confirmed). Returns (cfg, store)."""
    state = os.path.join(str(workdir), "state")
    store = ComponentStore(state)
    for slot, (version, image) in releases.items():
        store.prepare(slot)
        with open(store.image_path(slot, name), "wb") as f:
            f.write(image)
        address = 0x08000000 if protocol == "stm32-rom" else 0
        mcu = {"id": name, "protocol": protocol, "address": address, "version": version,
               "sha256": hashlib.sha256(image).hexdigest()}  # fmt: skip
        with open(os.path.join(store.dir, "%s.json" % slot), "w") as f:
            json.dump({"components": {name: version}, "mcus": {name: mcu}}, f)
    store.set_running(name, running, True)
    path = os.path.join(str(workdir), "agent.toml")
    with open(path, "w") as f:
        f.write(CONFIG % {"state": state, "name": name, "protocol": protocol, "port": port,
                          "extra": extra})  # fmt: skip
    return config_mod.load(path), store


class SerialStack:
    """What the charging stack does for the agent: asks the MCU's application its version
    over the MCU's UART (as hil/virtual's stack does)."""

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
