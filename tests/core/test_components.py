"""The component model: mcu payloads in the manifest, what belongs together, and the pure
decisions (what to flash, what a rollback restores and how)."""

import json
import subprocess
import sys

import pytest

from agent.core import components as comp
from agent.core.errors import MalformedBundle
from agent.core.manifest import parse_manifest

SHA = "ab" * 32


def manifest(payloads, **top):
    fields = {"format": 1, "version": "1.2.0", "security_version": 1,
              "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z",
              "compatible": [{"model": "M", "hardware_revisions": ["r"]}],
              "payloads": payloads}  # fmt: skip
    fields.update(top)
    return json.dumps(fields).encode()


ROOTFS = {"name": "rootfs", "slot_class": "rootfs", "size": 10, "sha256": SHA}
SAFETY = {"name": "safety-fw", "type": "mcu", "size": 8, "sha256": SHA,
          "mcu": {"id": "safety", "protocol": "stm32-rom", "address": 0x08000000,
                  "version": "2.1.0"}}  # fmt: skip


def test_mcu_payload_and_derived_components():
    m = parse_manifest(manifest([ROOTFS, SAFETY]))
    safety = m.payload("safety-fw")
    assert (safety.type, safety.component, safety.slot_class) == ("mcu", "safety", None)
    assert safety.mcu["address"] == 0x08000000
    assert m.components == {"rootfs": "1.2.0", "safety": "2.1.0"}
    assert m.payload("rootfs").to_dict().get("type") is None  # slot payloads look as before
    assert m.to_dict()["payloads"][1]["mcu"]["protocol"] == "stm32-rom"


def test_two_mcus_in_one_release_but_never_two_images_for_one_mcu():
    meter = dict(SAFETY, name="meter-fw", mcu=dict(SAFETY["mcu"], id="meter", protocol="mcuboot"))
    m = parse_manifest(manifest([ROOTFS, SAFETY, meter]))  # no slot class on either: not a repeat
    assert m.components == {"rootfs": "1.2.0", "safety": "2.1.0", "meter": "2.1.0"}
    again = dict(SAFETY, name="safety-fw-2")
    with pytest.raises(MalformedBundle, match=r"payloads\[2\].mcu.id repeats 'safety'"):
        parse_manifest(manifest([ROOTFS, SAFETY, again]))


def test_components_mapping_may_name_more_but_must_agree_with_payloads():
    m = parse_manifest(manifest([ROOTFS, SAFETY], components={
        "rootfs": "1.2.0", "safety": "2.1.0", "meter": "1.0.4"}))  # fmt: skip
    assert m.components["meter"] == "1.0.4"
    with pytest.raises(MalformedBundle, match="components.safety"):
        parse_manifest(manifest([ROOTFS, SAFETY], components={"rootfs": "1.2.0",
                                                              "safety": "2.0.0"}))  # fmt: skip


@pytest.mark.parametrize("change, field", [
    ({"type": "fpga"}, "type"),
    ({"slot_class": "rootfs"}, "slot_class"),
    ({"mcu": {"id": "s", "protocol": "p", "address": -1, "version": "1.0.0"}}, "mcu.address"),
    ({"mcu": {"id": "s", "protocol": "p", "address": 0, "version": "one"}}, "mcu.version"),
    ({"mcu": {"id": "s", "protocol": "p", "address": 0, "version": "1.0.0", "x": 1}}, "mcu.x"),
    ({"mcu": "safety"}, "mcu"),
])  # fmt: skip
def test_malformed_mcu_payloads_name_the_field(change, field):
    with pytest.raises(MalformedBundle, match=field.replace(".", r"\.")):
        parse_manifest(manifest([ROOTFS, dict(SAFETY, **change)]))


def test_check_board_refuses_unknown_mcu_or_other_protocol():
    m = parse_manifest(manifest([ROOTFS, SAFETY]))
    assert comp.check_board(m, {"safety": {"protocol": "stm32-rom"}}) is None
    assert "does not have" in comp.check_board(m, {})
    assert "mcuboot-smp" in comp.check_board(m, {"safety": {"protocol": "mcuboot-smp"}})


def test_plan_flash_writes_what_differs_or_does_not_answer():
    targets = {"safety": "2.1.0", "meter": "1.1.0"}
    assert comp.plan_flash(targets, {"safety": "2.1.0", "meter": "1.0.0"}) == ["meter"]
    assert comp.plan_flash(targets, {"safety": None, "meter": "1.1.0"}) == ["safety"]
    assert comp.plan_flash(targets, dict(targets)) == []


def test_plan_restore_resets_an_unconfirmed_mcuboot_image_and_reflashes_the_rest():
    kept = {"safety": "2.0.0", "meter": "1.0.0"}
    kinds = {"safety": comp.REVERT_BY_REFLASH, "meter": comp.REVERT_BY_RESET}
    running = {"safety": "2.1.0", "meter": "1.1.0"}
    plan = comp.plan_restore(kept, running, kinds, {"meter": False})
    assert plan == [("meter", "reset"), ("safety", "reflash")]
    # Confirmed at a commit (a regression rollback later): MCUboot has nothing to swap back.
    assert comp.plan_restore(kept, running, kinds, {"meter": True})[0] == ("meter", "reflash")
    # A torn write: the ROM MCU does not answer at all.
    assert comp.plan_restore(kept, {"safety": None, "meter": "1.0.0"}, kinds, {}) == [
        ("safety", "reflash")]  # fmt: skip
    assert comp.plan_restore(kept, dict(kept), kinds, {}) == []


def test_plan_restore_after_a_power_cut_in_a_rollback():
    kept = {"meter": "1.0.0"}
    kinds = {"meter": comp.REVERT_BY_RESET}
    # The cut came after `image test` of the old image: MCUboot swapped it in on trial.
    assert comp.plan_restore(kept, {"meter": "1.0.0"}, kinds, {"meter": False}) == [
        ("meter", "confirm")]  # fmt: skip
    # A hung application on trial does not answer: a reset gets MCUboot to revert it.
    assert comp.plan_restore(kept, {"meter": None}, kinds, {"meter": False}) == [
        ("meter", "reset")]  # fmt: skip


def test_bundle_create_and_inspect_carry_an_mcu_image(tmp_path):
    from agent.trust import crypto

    key = crypto.generate("ed25519")
    (tmp_path / "k.key").write_bytes(crypto.private_pem(key))
    (tmp_path / "rootfs.img").write_bytes(b"r" * 100)
    (tmp_path / "safety.bin").write_bytes(b"s" * 64)
    cli = [sys.executable, "-m", "agent"]
    done = subprocess.run(cli + ["bundle", "create", "--key", str(tmp_path / "k.key"),
                                 "--version", "1.2.0", "--security-version", "1", "--model", "M",
                                 "--hw-rev", "r", "--payload", "rootfs:rootfs:%s" % (
                                     tmp_path / "rootfs.img"),
                                 "--mcu", "safety-fw:safety:stm32-rom:0x08000000:2.1.0:%s" % (
                                     tmp_path / "safety.bin"),
                                 "--component", "meter=1.0.4", "-o", str(tmp_path / "b.cub")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run(cli + ["bundle", "inspect", str(tmp_path / "b.cub")],
                          capture_output=True, text=True)  # fmt: skip
    assert "MCU safety (stm32-rom at 0x08000000, version 2.1.0)" in done.stdout
    assert "components meter 1.0.4, rootfs 1.2.0, safety 2.1.0" in done.stdout
    bad = subprocess.run(cli + ["bundle", "create", "--key", str(tmp_path / "k.key"),
                                "--version", "1.2.0", "--security-version", "1", "--model", "M",
                                "--hw-rev", "r", "--mcu", "safety:stm32-rom:0x08:2.1.0",
                                "-o", str(tmp_path / "c.cub")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 20 and "Traceback" not in bad.stderr
    assert "NAME:MCU_ID:PROTOCOL:ADDRESS:VERSION:PATH" in bad.stderr


def test_check_uncarried_allows_only_the_version_the_mcu_keeps():
    kept = {"safety": "1.0.0"}
    assert comp.check_uncarried({"rootfs": "1.1.0"}, set(), kept) is None
    assert comp.check_uncarried({"safety": "1.0.0"}, set(), kept) is None
    assert comp.check_uncarried({"safety": "2.0.0"}, {"safety"}, kept) is None  # carried
    assert comp.check_uncarried({"meter": "9.0.0"}, set(), kept) is None  # not on this board
    assert "runs 1.0.0" in comp.check_uncarried({"safety": "3.0.0"}, set(), kept)
