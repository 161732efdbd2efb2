"""Each test is one attack on the bundle or its trust chain, named after the attack."""

import io
import json
import struct
import time

import pytest

from agent.bundle import format as fmt
from agent.bundle.reader import open_bundle, verify_file
from agent.bundle.writer import sign_envelope
from agent.core.envelope import MANIFEST_TYPE, Envelope, parse_envelope
from agent.core.errors import (
    BadSignature,
    Downgrade,
    Expired,
    MalformedBundle,
    PayloadMismatch,
    Truncated,
    UnknownKey,
    WrongHardware,
    WrongModel,
)
from agent.trust.store import Trust
from tests.bundle import factory
from tests.bundle.factory import DAY, device, make_bundle, make_keys, make_root


def split(path):
    """(header+envelope Envelope, payload bytes) of a bundle file."""
    data = open(path, "rb").read()
    length = fmt.parse_header(data[: fmt.HEADER_SIZE])
    env = parse_envelope(data[fmt.HEADER_SIZE : fmt.HEADER_SIZE + length])
    return env, data[fmt.HEADER_SIZE + length :]


def rewrite(path, envelope, payloads):
    raw = envelope.encode()
    with open(path, "wb") as f:
        f.write(fmt.encode_header(raw) + raw + payloads)


def check(bundle, root, **kw):
    return verify_file(bundle, Trust(root), kw.pop("dev", device()), **kw)


def test_good_bundle_verifies(built):
    bundle, root = built
    assert check(bundle, root, installed_security_version=1).version == "1.0.0"


def test_bad_signature_rejected_when_manifest_altered(built):
    bundle, root = built
    env, payloads = split(bundle)
    forged = env.payload.replace(b'"security_version": 1', b'"security_version": 9')
    assert forged != env.payload
    rewrite(bundle, Envelope(env.payload_type, forged, env.signatures), payloads)
    with pytest.raises(BadSignature):
        check(bundle, root)


def test_bad_signature_rejected_when_signature_bytes_flipped(built):
    bundle, root = built
    env, payloads = split(bundle)
    keyid, sig = env.signatures[0]
    sig = bytes([sig[0] ^ 1]) + sig[1:]
    rewrite(bundle, Envelope(env.payload_type, env.payload, [(keyid, sig)]), payloads)
    with pytest.raises(BadSignature):
        check(bundle, root)


def test_unknown_key_rejected(tmp_path):
    stranger = make_keys(1, tag="stranger")
    bundle, _ = make_bundle(tmp_path, keys=stranger, root_path=make_root(tmp_path))
    with pytest.raises(UnknownKey):
        check(bundle, str(tmp_path / "root.json"))


def test_unsigned_bundle_rejected_as_unknown_key(built):
    bundle, root = built
    env, payloads = split(bundle)
    rewrite(bundle, Envelope(env.payload_type, env.payload, []), payloads)
    with pytest.raises(UnknownKey):
        check(bundle, root)


def test_expired_bundle_rejected(tmp_path):
    now = int(time.time())
    bundle, root = make_bundle(tmp_path, created=now - 10 * DAY, expires=now - DAY)
    with pytest.raises(Expired):
        check(bundle, root)
    # The same bundle was fine while it was valid: the clock decides, nothing else.
    assert check(bundle, root, now=now - 2 * DAY).version == "1.0.0"


def test_downgrade_below_installed_security_version_rejected(tmp_path):
    bundle, root = make_bundle(tmp_path, version="2.0.0", security_version=4)
    with pytest.raises(Downgrade):
        check(bundle, root, installed_security_version=5)
    assert check(bundle, root, installed_security_version=4).security_version == 4


def test_wrong_model_rejected(tmp_path):
    bundle, root = make_bundle(tmp_path, model="OTHER-DC150")
    with pytest.raises(WrongModel):
        check(bundle, root)


def test_wrong_hardware_revision_rejected(tmp_path):
    bundle, root = make_bundle(tmp_path, hw=["rev-c", "rev-d"])
    with pytest.raises(WrongHardware):
        check(bundle, root)


def test_threshold_not_met_rejected(tmp_path):
    release = make_keys(3, tag="release3")
    root = make_root(tmp_path, release_keys=release, release_threshold=2)
    one, _ = make_bundle(tmp_path, keys=release[:1], root_path=root, name="one.cub")
    with pytest.raises(BadSignature, match="1 of the 2"):
        check(one, root)
    two, _ = make_bundle(tmp_path, keys=release[1:], root_path=root, name="two.cub")
    assert check(two, root)


def test_threshold_not_met_by_one_key_signing_twice(tmp_path):
    release = make_keys(2, tag="release2")
    root = make_root(tmp_path, release_keys=release, release_threshold=2)
    bundle, _ = make_bundle(tmp_path, keys=release[:1], root_path=root)
    env, payloads = split(bundle)
    doubled = Envelope(env.payload_type, env.payload, env.signatures * 2)
    rewrite(bundle, doubled, payloads)
    with pytest.raises(BadSignature):
        check(bundle, root)


def test_manifest_reserialisation_breaks_signature(built):
    bundle, root = built
    env, payloads = split(bundle)
    same_content = json.dumps(json.loads(env.payload), separators=(",", ":")).encode()
    assert json.loads(same_content) == json.loads(env.payload) and same_content != env.payload
    rewrite(bundle, Envelope(env.payload_type, same_content, env.signatures), payloads)
    with pytest.raises(BadSignature):
        check(bundle, root)


def test_root_signed_as_manifest_type_confusion_rejected(tmp_path, built):
    bundle, root = built
    _, payloads = split(bundle)
    root_env = parse_envelope(open(root, "rb").read())
    rewrite(bundle, root_env, payloads)
    with pytest.raises(MalformedBundle, match="payloadType"):
        check(bundle, root)


@pytest.mark.parametrize("cut", [0, 5, fmt.HEADER_SIZE + 3, -1000, -1])
def test_truncated_bundle(built, cut):
    bundle, root = built
    data = open(bundle, "rb").read()
    open(bundle, "wb").write(data[:cut])
    with pytest.raises(Truncated):
        check(bundle, root)


def test_payload_byte_flipped_is_payload_mismatch(built):
    bundle, root = built
    data = bytearray(open(bundle, "rb").read())
    data[-100] ^= 0x40
    open(bundle, "wb").write(bytes(data))
    with pytest.raises(PayloadMismatch):
        check(bundle, root)


def test_appended_data_after_last_payload_rejected(built):
    bundle, root = built
    with open(bundle, "ab") as f:
        f.write(b"extra")
    with pytest.raises(MalformedBundle, match="after its last payload"):
        check(bundle, root)


class EndlessSource:
    """A source that never ends (the endless-data attack) and counts what it handed out."""

    def __init__(self, head):
        self.head = head
        self.served = 0

    def read(self, n):
        block = (self.head[self.served :] + b"\0" * n)[:n]
        self.served += len(block)
        return block


def test_oversized_manifest_endless_header():
    head = struct.pack(">8sI", fmt.MAGIC, 0xFFFFFFFF)
    source = EndlessSource(head)
    with pytest.raises(MalformedBundle, match="more than"):
        open_bundle(source.read)
    assert source.served == fmt.HEADER_SIZE  # not one byte of the announced envelope was read


def test_oversized_manifest_inside_a_validly_signed_envelope(tmp_path):
    release = factory.default_keys()[1]
    big = b'{"format": 1, "pad": "' + b"x" * 70000 + b'"}'
    raw = sign_envelope(MANIFEST_TYPE, big, [release]).encode()
    root = make_root(tmp_path)
    with pytest.raises(MalformedBundle, match="more than"):
        open_bundle(io.BytesIO(fmt.encode_header(raw) + raw).read, Trust(root))


def test_gzip_bomb_bounded_by_signed_installed_size(tmp_path):
    bundle, root = make_bundle(tmp_path, payloads={"rootfs": b"\0" * 200000}, compress=True)
    env, payloads = split(bundle)
    doc = json.loads(env.payload)
    doc["payloads"][0]["installed_size"] = 1000  # signer claims less than it inflates to
    forged = json.dumps(doc).encode()
    rewrite(bundle, sign_envelope(MANIFEST_TYPE, forged, [factory.default_keys()[1]]), payloads)
    with pytest.raises(PayloadMismatch, match="installed size"):
        check(bundle, root)


def test_expired_root_rejected(tmp_path):
    now = int(time.time())
    root = make_root(tmp_path, expires=now - 1)
    bundle, _ = make_bundle(tmp_path, root_path=root)
    with pytest.raises(Expired, match="root"):
        check(bundle, root)
