"""What an install records for the MCUs: a release that carries no image for an MCU keeps the
one that MCU runs (its image and record are carried into the new slot's release), so a later
release that does carry it can still be rolled back; a release that names an MCU version it
does not carry, other than the one the MCU runs, is refused before any byte is written."""

import hashlib
import json
import os
import time

import pytest

from agent.bundle.writer import PayloadSource, create_bundle
from agent.cli import main
from agent.state.components import ComponentStore
from agent.state.slotstate import SlotState
from tests.bundle.factory import HW, MODEL, default_keys, make_root
from tests.install.conftest import FileBoard

SAFETY_1 = b"safety firmware 1.0.0" * 50
SAFETY_2 = b"safety firmware 2.0.0" * 50


@pytest.fixture
def charger(tmp_path):
    root = make_root(str(tmp_path / "root.json"), release_keys=[default_keys()[1]])
    (tmp_path / "board").mkdir()
    board = FileBoard(tmp_path / "board", root)
    with open(board.config_path, "a") as f:
        f.write('[components.safety]\nprotocol = "stm32-rom"\nport = "/dev/ttyMCU0"\n')
    store = ComponentStore(board.config().state_dir)
    store.prepare("A")  # the factory: the safety MCU's image kept with slot A
    with open(store.image_path("A", "safety"), "wb") as f:
        f.write(SAFETY_1)
    mcu = {"id": "safety", "protocol": "stm32-rom", "address": 0x08000000, "version": "1.0.0",
           "sha256": hashlib.sha256(SAFETY_1).hexdigest()}  # fmt: skip
    with open(os.path.join(store.dir, "A.json"), "w") as f:
        json.dump({"components": {"rootfs": "1.0.0", "safety": "1.0.0"},
                   "mcus": {"safety": mcu}}, f)  # fmt: skip
    store.set_running("safety", "1.0.0", True)
    return board, store, tmp_path


def release(tmp_path, version, safety=None, components=None):
    rootfs = tmp_path / ("rootfs-%s.img" % version)
    rootfs.write_bytes(os.urandom(4096))
    sources = [PayloadSource("rootfs", "rootfs", str(rootfs))]
    if safety is not None:
        path = tmp_path / ("safety-%s.bin" % safety[0])
        path.write_bytes(safety[1])
        mcu = {"id": "safety", "protocol": "stm32-rom", "address": 0x08000000,
               "version": safety[0]}  # fmt: skip
        sources.append(PayloadSource("safety-fw", None, str(path), component="safety", mcu=mcu))
    out = str(tmp_path / ("release-%s.cub" % version))
    now = int(time.time())
    create_bundle(out, sources, [default_keys()[1]], version=version, security_version=1,
                  compatible=[{"model": MODEL, "hardware_revisions": [HW]}],
                  expires=now + 86400, created=now - 60, components=components)  # fmt: skip
    return out


def booted(board, slot):
    """The board now runs `slot` (as after a committed trial)."""
    with open(board.config_path) as f:
        text = f.read()
    with open(board.config_path, "w") as f:
        f.write(text.replace('booted = "A"', 'booted = "%s"' % slot))


def test_a_release_without_the_mcus_image_carries_it_so_the_next_can_roll_back(charger):
    board, store, tmp = charger
    assert main(["--config", board.config_path, "install", release(tmp, "1.1.0")]) == 0
    b = store.release("B")
    assert b["components"] == {"rootfs": "1.1.0", "safety": "1.0.0"}
    assert b["mcus"]["safety"]["version"] == "1.0.0"
    assert store.read_image("B", "safety") == SAFETY_1
    booted(board, "B")  # 1.1.0 committed; the next release goes into A
    bundle = release(tmp, "1.2.0", safety=("2.0.0", SAFETY_2))
    assert main(["--config", board.config_path, "install", bundle]) == 0
    assert store.release("A")["mcus"]["safety"]["version"] == "2.0.0"
    assert store.read_image("B", "safety") == SAFETY_1  # what a rollback writes back


def test_a_release_naming_an_mcu_version_it_does_not_carry_is_refused(charger, capsys):
    board, store, tmp = charger
    bundle = release(tmp, "1.1.0", components={"rootfs": "1.1.0", "safety": "3.0.0"})
    code = main(["--config", board.config_path, "install", bundle])
    assert code != 0
    assert "safety" in capsys.readouterr().err
    assert SlotState(board.config().state_dir).version("B") is None
    # Naming the version the MCU runs is fine: that is what the release keeps.
    bundle = release(tmp, "1.1.1", components={"rootfs": "1.1.1", "safety": "1.0.0"})
    assert main(["--config", board.config_path, "install", bundle]) == 0
