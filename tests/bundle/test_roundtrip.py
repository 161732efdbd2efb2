import hashlib
import io
import os

import pytest

from agent.bundle import format as fmt
from agent.bundle.reader import check_payload, open_bundle, verify_file
from agent.trust import crypto
from agent.trust.store import Trust
from tests.bundle.factory import device, make_bundle, make_keys, make_root


@pytest.mark.parametrize("keytype", crypto.KEYTYPES)
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_for_every_key_type(tmp_path, keytype, compress):
    keys = make_keys(1, keytype=keytype, tag="rt")
    data = {"rootfs": os.urandom(300000) + b"\0" * 300000, "coproc": ("coprocessor", b"fw")}
    bundle, root = make_bundle(tmp_path, payloads=data, keys=keys, compress=compress)
    m = verify_file(bundle, Trust(root), device(), installed_security_version=0)
    by_name = dict((p.name, p) for p in m.payloads)
    assert by_name["coproc"].slot_class == "coprocessor"
    for name, p in by_name.items():
        blob = data[name][1] if isinstance(data[name], tuple) else data[name]
        assert p.installed_size == len(blob)
        assert p.installed_sha256 == hashlib.sha256(blob).hexdigest()
        assert p.compression == ("gzip" if compress else "none")


def test_mixed_key_types_meet_a_threshold(tmp_path):
    keys = make_keys(1, "ed25519", "mix") + make_keys(1, "ecdsa-p256", "mix")
    root = make_root(tmp_path, release_keys=keys, release_threshold=2)
    bundle, _ = make_bundle(tmp_path, keys=keys, root_path=root)
    assert verify_file(bundle, Trust(root), device())


class CountingReader:
    def __init__(self, data):
        self.f = io.BytesIO(data)
        self.calls = []

    def read(self, n):
        self.calls.append(n)
        return self.f.read(n)


def test_open_bundle_reads_only_the_head_and_stops_at_the_first_payload(tmp_path):
    payloads = {"a": b"A" * 1000, "b": b"B" * 500}
    bundle, root = make_bundle(tmp_path, payloads=payloads)
    data = open(bundle, "rb").read()
    reader = CountingReader(data)
    manifest, envelope = open_bundle(reader.read, Trust(root))
    assert reader.f.tell() == fmt.HEADER_SIZE + len(envelope.raw)
    assert fmt.bundle_size(len(envelope.raw), manifest) == len(data)
    assert [p.name for p in manifest.payloads] == ["a", "b"]
    # Payloads follow back to back in manifest order; the caller streams them.
    for p in manifest.payloads:
        check_payload(reader.read, p, chunk_size=128)
    assert reader.f.read() == b""
    assert max(reader.calls) <= max(fmt.HEADER_SIZE, len(envelope.raw), 128)


def test_open_bundle_without_trust_is_for_inspection_only(built):
    bundle, _ = built
    with open(bundle, "rb") as f:
        manifest, envelope = open_bundle(f.read)
    assert manifest.raw == envelope.payload


def test_bundle_bytes_are_reproducible(tmp_path):
    a, root = make_bundle(tmp_path, payloads={"r": b"x" * 1000}, created=1, expires=2_000_000_000)
    b, _ = make_bundle(
        tmp_path, payloads={"r": b"x" * 1000}, created=1, expires=2_000_000_000, name="b.cub"
    )
    ha, hb = open(a, "rb").read(), open(b, "rb").read()
    # Ed25519 is deterministic, so identical input gives an identical file.
    assert ha == hb


def test_empty_payload_is_allowed(tmp_path):
    bundle, root = make_bundle(tmp_path, payloads={"cfg": b""})
    assert verify_file(bundle, Trust(root), device()).payloads[0].size == 0
