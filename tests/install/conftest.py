"""A file-backed board for installer tests: slots A/B as files, the simulated bootloader; a
signer of format-2 bundles and a real HTTP server on 127.0.0.1 serving them."""

import json
import os
import time

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


@pytest.fixture
def signer(tmp_path):
    """sign(data, name, version, bases) -> path of a format-2 bundle of the image `data`,
    packed with front frames for the images `bases` (bundle create --delta-base); .root is
    the root file that trusts its key."""
    from agent.bundle.writer import PayloadSource, create_bundle
    from tests.bundle.factory import make_keys, make_root

    key = make_keys(1, tag="delta")[0]
    root = str(tmp_path / "root.json")
    make_root(root, release_keys=[key])

    def sign(data, name="new.cub", version="2.0.0", bases=()):
        path = str(tmp_path / (name + ".img"))
        with open(path, "wb") as f:
            f.write(data)
        base_paths = []
        for k, base in enumerate(bases):
            base_paths.append(str(tmp_path / ("%s.base%d" % (name, k))))
            with open(base_paths[-1], "wb") as f:
                f.write(base)
        out = str(tmp_path / name)
        create_bundle(
            out, [PayloadSource("rootfs", "rootfs", path, "zstd-chunks", bases=base_paths)],
            [key], version=version, security_version=1,
            compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
            expires=int(time.time()) + 86400,
        )  # fmt: skip
        return out

    sign.root = root
    return sign


@pytest.fixture
def served():
    """serve(path) -> a started FileServer with the bundle as b.cub (stopped after the test)."""
    from hil.services.httpserver import FileServer

    servers = []

    def serve(path):
        servers.append(FileServer({"b.cub": path}).start())
        return servers[-1]

    yield serve
    for server in servers:
        server.stop()
