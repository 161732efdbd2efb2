"""The agent's MCU steps (agent/control/components.py) with an MCUboot MCU: the trial
leaves the new image unconfirmed, the commit confirms it, a rollback while unconfirmed is a
reset (MCUboot swaps back by itself), a rollback after a commit writes the old image again."""

import hashlib
import json
import os
import sys

import pytest

from agent import config as config_mod
from agent.control import components as mcu_steps
from agent.core.manifest import parse_manifest
from agent.state.components import ComponentStore
from hil.emulators import mcu_image, mcuboot_image
from hil.emulators.mcuboot_dev import McubootDevice

pytestmark = pytest.mark.skipif(sys.version_info < (3, 10), reason="smpclient needs 3.10+")
OLD = mcuboot_image.build(mcu_image.build("1.0.0", size=3000), "1.0.0")
NEW = mcuboot_image.build(mcu_image.build("2.0.0", size=3000), "2.0.0")


@pytest.fixture
def meter(tmp_path):
    with McubootDevice(primary=OLD) as dev:
        state = tmp_path / "state"
        store = ComponentStore(str(state))
        for slot, image, version in (("A", OLD, "1.0.0"), ("B", NEW, "2.0.0")):
            store.prepare(slot)
            with open(store.image_path(slot, "meter"), "wb") as f:
                f.write(image)
            mcu = {"id": "meter", "protocol": "mcuboot-smp", "address": 0, "version": version,
                   "sha256": hashlib.sha256(image).hexdigest()}  # fmt: skip
            with open(os.path.join(store.dir, "%s.json" % slot), "w") as f:
                json.dump({"components": {"meter": version}, "mcus": {"meter": mcu}}, f)
        store.set_running("meter", "1.0.0", True)
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
[components.meter]
protocol = "mcuboot-smp"
port = "%s"
timeout_s = 1.0
"""
            % (state, dev.port)
        )
        yield dev, config_mod.load(str(tmp_path / "agent.toml")), store


def test_trial_then_commit_confirms(meter):
    dev, cfg, store = meter
    assert mcu_steps.flash(cfg, "B", None) == {"meter": "wrote 2.0.0"}
    assert mcu_steps.verify_running(cfg, "B", None) == {"meter": "2.0.0"}
    assert store.running()["meter"] == {"version": "2.0.0", "confirmed": False}
    mcu_steps.confirm(cfg, "B", None)
    assert dev.image_ok and store.running()["meter"]["confirmed"]
    assert mcu_steps.flash(cfg, "B", None) == {"meter": "already runs 2.0.0"}  # idempotent


def test_rollback_during_the_trial_is_mcuboots_own_revert(meter):
    dev, cfg, store = meter
    mcu_steps.flash(cfg, "B", None)
    assert mcu_steps.restore(cfg, "A", None) == {"meter": "reverted to 1.0.0"}
    assert ("revert", "1.0.0") in dev.events
    assert not [e for e in dev.events if e[0] == "upload-start"][1:]  # nothing uploaded again


def test_rollback_after_a_commit_writes_the_old_image_again(meter):
    dev, cfg, store = meter
    mcu_steps.flash(cfg, "B", None)
    mcu_steps.confirm(cfg, "B", None)
    assert mcu_steps.restore(cfg, "A", None) == {"meter": "wrote 1.0.0 again"}
    assert dev.primary.info()[0] == "1.0.0" and dev.image_ok


def test_release_for_an_mcu_the_board_lacks_is_refused_before_install(meter, tmp_path):
    from agent.transfer.installer import check_components

    _, cfg, _ = meter
    from agent.core.errors import WrongHardware

    rfid = {"id": "rfid", "protocol": "stm32-rom", "address": 0, "version": "1.0.0"}
    raw = json.dumps({"format": 1, "version": "2.0.0", "security_version": 1,
                      "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z",
                      "compatible": [{"model": "M", "hardware_revisions": ["r"]}],
                      "payloads": [{"name": "x", "type": "mcu", "size": 1, "sha256": "a" * 64,
                                    "mcu": rfid}]}).encode()  # fmt: skip
    with pytest.raises(WrongHardware, match="does not have"):
        check_components(parse_manifest(raw), cfg, "A")


@pytest.mark.parametrize("step", ["flash", "restore"])
def test_mcu_write_holds_the_state_lock(meter, step):
    """Issue 11 #27 for MCUs: while an MCU is written, another writer (an install, a boot
    change, the daemon's restore) is refused with StateBusy naming the MCU write, and the
    lock is free again afterwards."""
    from agent.core.errors import StateBusy
    from agent.state.statedir import StateLock

    dev, cfg, store = meter
    if step == "restore":
        mcu_steps.flash(cfg, "B", None)
        mcu_steps.confirm(cfg, "B", None)  # restore must write the old image again
    refused = []

    def progress(*_):
        try:
            with StateLock(cfg.state_dir, "charger-update install"):
                refused.append(None)
        except StateBusy as e:
            refused.append(e.message)

    if step == "flash":
        mcu_steps.flash(cfg, "B", None, progress)
    else:
        mcu_steps.restore(cfg, "A", None, progress)
    assert refused and all(r and "MCUs of slot" in r for r in refused), refused
    with StateLock(cfg.state_dir, "after the MCU write"):
        pass


def test_mcu_confirm_holds_the_state_lock(meter):
    from agent.core.errors import StateBusy
    from agent.state.statedir import StateLock

    dev, cfg, store = meter
    mcu_steps.flash(cfg, "B", None)
    with StateLock(cfg.state_dir, "charger-update boot mark-bad"):
        with pytest.raises(StateBusy, match="mark-bad"):
            mcu_steps.confirm(cfg, "B", None)
    assert store.running()["meter"]["confirmed"] is False  # nothing confirmed behind its back
