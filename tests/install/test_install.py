"""`charger-update install`: verify first, stream into the inactive slot, read back, switch.

Every rejection must leave the booted slot primary and the inactive slot not bootable."""

import os

import pytest

from agent.bundle import format as fmt
from agent.cli import main
from agent.core.envelope import Envelope, parse_envelope
from agent.state.slotstate import SlotState
from tests.bundle.factory import make_bundle

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def edit_manifest(bundle_bytes, old, new):
    """The bundle with its manifest edited and the old signatures kept (an attacker's edit)."""
    length = fmt.parse_header(bundle_bytes[: fmt.HEADER_SIZE])
    end = fmt.HEADER_SIZE + length
    env = parse_envelope(bundle_bytes[fmt.HEADER_SIZE : end])
    assert old in env.payload
    forged = Envelope(env.payload_type, env.payload.replace(old, new), env.signatures).encode()
    return fmt.encode_header(forged) + forged + bundle_bytes[end:]


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
    tampered = tmp_path / "tampered.cub"
    tampered.write_bytes(edit_manifest(open(bundle, "rb").read(), b'"1.0.0"', b'"9.0.0"'))
    b = board(root)
    assert install(b, tampered) == 10
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
    [
        ({"model": "OTHER-DC50"}, 14),
        ({"hw": "rev-z"}, 15),
        ({"created": 1000, "expires": 2000}, 12),
    ],
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


def test_install_over_http_resumes_after_server_drops_connection(tmp_path, board):
    from hil.services.httpserver import FileServer

    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0", compress=True)
    server = FileServer({"b.cub": str(bundle)}).start()
    try:
        server.faults.drop_after = 1024 * 1024  # mid-payload
        server.faults.drop_times = 1
        b = board(root)
        assert install(b, server.url("b.cub")) == 0
        ranges = [r["range"] for r in server.requests if r["range"]]
    finally:
        server.stop()
    assert b.read_slot("B") == PAYLOAD
    assert ranges, "the client never resumed with a Range request"


def test_endless_junk_from_server_rejected_at_the_header(tmp_path, board):
    from hil.services.httpserver import FileServer

    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD})
    server = FileServer({"b.cub": str(bundle)}).start()
    try:
        server.faults.endless = True
        b = board(root)
        assert install(b, server.url("b.cub")) == 19
    finally:
        server.stop()
    assert_untouched(b)


# -- [readback]: a per-slot-class choice, said in the output, never silent ------------------


def _count_readbacks(monkeypatch):
    import agent.transfer.slots as slots

    made, base = [], slots._ReadBehind

    class Counted(base):
        def __init__(self, *a, **kw):
            made.append(1)
            base.__init__(self, *a, **kw)

    monkeypatch.setattr(slots, "_ReadBehind", Counted)
    return made


def test_readback_is_on_by_default_and_said(tmp_path, board, capsys, monkeypatch):
    made = _count_readbacks(monkeypatch)
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    assert install(board(root), bundle, "--no-switch") == 0
    assert made and "read back OK" in capsys.readouterr().out


def test_readback_turned_off_for_a_slot_class_is_skipped_and_said(
    tmp_path, board, capsys, monkeypatch
):
    made = _count_readbacks(monkeypatch)
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    b = board(root)
    with open(b.config_path, "a") as f:
        f.write("[readback]\nrootfs = false\n")
    assert install(b, bundle, "--no-switch") == 0
    out = capsys.readouterr().out
    assert not made and "NOT read back: rootfs ([readback] in the config)" in out
    assert b.read_slot("B") == PAYLOAD  # the sha256 of what was written is still checked


@pytest.mark.parametrize(
    "table, says",
    [("appfs = false", "names slot class 'appfs'"), ('rootfs = "no"', "must be true or false")],
)
def test_readback_table_errors_are_config_errors(tmp_path, board, capsys, table, says):
    bundle, root = make_bundle(tmp_path, {"rootfs": PAYLOAD}, version="1.1.0")
    b = board(root)
    with open(b.config_path, "a") as f:
        f.write("[readback]\n%s\n" % table)
    assert install(b, bundle) == 20
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert b.read_slot("B") == b"old firmware 0.9"
