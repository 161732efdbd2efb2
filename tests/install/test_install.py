"""`charger-update install`: verify first, stream into the inactive slot, read back, switch.

Every rejection must leave the booted slot primary and the inactive slot not bootable."""

import os

import pytest

from agent.cli import main
from agent.slotstate import SlotState
from tests.bundle.factory import make_bundle

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def install(board, bundle, *extra):
    return main(["--config", board.config_path, "install", str(bundle)] + list(extra))


def assert_untouched(board):
    boot = board.boot()
    assert boot.primary_slot() == "A"
    assert boot.attempts_left("B") == 0
    assert board.read_slot("A") == b"factory firmware 1.0"
    assert SlotState(board.config().state_dir).version("B") is None


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_install_streams_into_inactive_slot_then_tries_it_once(tmp_path, board, compress):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0", compress=compress)
    b = board(root)
    assert install(b, bundle) == 0
    assert b.read_slot("B") == PAYLOAD
    assert b.read_slot("A") == b"factory firmware 1.0"
    boot = b.boot()
    assert boot.primary_slot() == "B" and boot.attempts_left("B") == 1
    assert SlotState(b.config().state_dir).version("B") == "1.1.0"


def test_no_switch_installs_without_touching_boot_order(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    b = board(root)
    assert install(b, bundle, "--no-switch") == 0
    assert b.read_slot("B") == PAYLOAD
    assert b.boot().primary_slot() == "A"


def test_bad_signature_rejected_before_any_slot_write(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD})
    data = bytearray(open(bundle, "rb").read())
    i = data.index(b'"version"')  # inside the signed manifest (base64 in the envelope)
    data[i + 2] ^= 0x01
    tampered = tmp_path / "tampered.cub"
    tampered.write_bytes(bytes(data))
    b = board(root)
    assert install(b, tampered) in (10, 19)
    assert b.read_slot("B") == b"old firmware 0.9"  # not one byte written
    assert_untouched(b)


def test_payload_byte_flip_leaves_inactive_slot_unbootable(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD})
    data = bytearray(open(bundle, "rb").read())
    data[-1000] ^= 0xFF  # inside the payload, after the signed header
    corrupt = tmp_path / "corrupt.cub"
    corrupt.write_bytes(bytes(data))
    b = board(root)
    assert install(b, corrupt) == 16
    assert_untouched(b)
    assert SlotState(b.config().state_dir).slot("B")["state"] == "writing"


def test_truncated_bundle_rejected(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD})
    data = open(bundle, "rb").read()
    short = tmp_path / "short.cub"
    short.write_bytes(data[: len(data) // 2])
    b = board(root)
    assert install(b, short) == 17
    assert_untouched(b)


def test_endless_data_after_last_payload_rejected(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD})
    longer = tmp_path / "longer.cub"
    longer.write_bytes(open(bundle, "rb").read() + b"\0" * 4096)
    b = board(root)
    assert install(b, longer) == 16
    assert_untouched(b)


def test_downgrade_below_installed_security_version_rejected(tmp_path, board):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, security_version=3)
    b = board(root)
    SlotState(b.config().state_dir).set_good("A", "1.0.0", security_version=5)
    assert install(b, bundle) == 13
    assert b.read_slot("B") == b"old firmware 0.9"


@pytest.mark.parametrize(
    "kwargs, code",
    [({"model": "OTHER-DC50"}, 14), ({"hw": "rev-z"}, 15), ({"expires": 1000}, 12)],
    ids=["wrong-model", "wrong-hardware-revision", "expired"],
)
def test_policy_rejections_leave_board_untouched(tmp_path, board, kwargs, code):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, **kwargs)
    b = board(root)
    assert install(b, bundle) == code
    assert b.read_slot("B") == b"old firmware 0.9"
    assert_untouched(b)


def test_unknown_key_rejected(tmp_path, board):
    from tests.bundle.factory import make_keys, make_root

    bundle, _ = make_bundle(tmp_path, {"rootfs": PAYLOAD}, keys=make_keys(1, tag="stranger"))
    other_root = make_root(tmp_path / "trusted-root.json")
    b = board(other_root)
    assert install(b, bundle) == 11
    assert_untouched(b)
