import json

import pytest

from agent.core.errors import MalformedBundle
from agent.core.manifest import MAX_MANIFEST, parse_manifest

SHA = "ab" * 32


def fields(**over):
    doc = {
        "format": 1,
        "version": "1.2.0",
        "security_version": 3,
        "created": "2026-11-01T00:00:00Z",
        "expires": "2027-11-01T00:00:00Z",
        "compatible": [{"model": "ACME-AC22", "hardware_revisions": ["rev-a", "rev-b"]}],
        "payloads": [{"name": "rootfs", "slot_class": "rootfs", "size": 10, "sha256": SHA}],
    }
    doc.update(over)
    return doc


def raw(doc):
    return json.dumps(doc).encode()


def test_parse_gives_the_documented_attributes():
    m = parse_manifest(raw(fields()))
    assert m.raw == raw(fields())
    assert (m.format, m.version, m.security_version) == (1, "1.2.0", 3)
    assert m.created == 1793491200 and m.expires == m.created + 365 * 86400
    assert m.compatible == [{"model": "ACME-AC22", "hardware_revisions": ["rev-a", "rev-b"]}]
    (p,) = m.payloads
    assert (p.name, p.slot_class, p.size, p.sha256, p.compression) == (
        "rootfs",
        "rootfs",
        10,
        SHA,
        "none",
    )
    assert (p.installed_size, p.installed_sha256) == (10, SHA)


@pytest.mark.parametrize(
    "field,value",
    [
        ("format", 3),
        ("format", True),
        ("version", "1.2"),
        ("security_version", -1),
        ("security_version", "3"),
        ("security_version", True),
        ("created", "yesterday"),
        ("expires", "2026-10-01T00:00:00Z"),
        ("compatible", []),
        ("compatible", [{"model": "ACME", "hardware_revisions": []}]),
        ("compatible", [{"model": "", "hardware_revisions": ["a"]}]),
        ("payloads", []),
        ("payloads", [{"name": "x", "slot_class": "rootfs", "size": 1, "sha256": "AB" * 32}]),
        ("payloads", [{"name": "x", "slot_class": "rootfs", "size": -1, "sha256": SHA}]),
        ("payloads", [{"name": "x/..", "slot_class": "rootfs", "size": 1, "sha256": SHA}]),
        ("payloads", [{"name": "x", "slot_class": "r", "size": 1, "sha256": SHA, "mode": 1}]),
        (
            "payloads",
            [{"name": "x", "slot_class": "r", "size": 1, "sha256": SHA, "compression": "xz"}],
        ),
        ("payloads", [{"name": "x", "slot_class": "r", "size": 1, "sha256": SHA}] * 2),
        ("surprise", 1),
    ],
)
def test_every_field_is_validated_and_named(field, value):
    with pytest.raises(MalformedBundle) as e:
        parse_manifest(raw(fields(**{field: value})))
    assert field in str(e.value)


def test_gzip_payload_needs_installed_size_and_hash():
    p = {"name": "x", "slot_class": "r", "size": 1, "sha256": SHA, "compression": "gzip"}
    with pytest.raises(MalformedBundle, match="installed_size"):
        parse_manifest(raw(fields(payloads=[p])))
    p.update(installed_size=5, installed_sha256="cd" * 32)
    assert parse_manifest(raw(fields(payloads=[p]))).payloads[0].installed_size == 5


def test_uncompressed_payload_cannot_claim_other_installed_bytes():
    p = {"name": "x", "slot_class": "r", "size": 1, "sha256": SHA, "installed_size": 2}
    with pytest.raises(MalformedBundle, match="installed"):
        parse_manifest(raw(fields(payloads=[p])))


def test_oversized_manifest_rejected_before_parsing():
    big = raw(fields()) + b" " * MAX_MANIFEST
    with pytest.raises(MalformedBundle, match="more than"):
        parse_manifest(big)


@pytest.mark.parametrize(
    "data", [b"", b"[]", b"\xff\xfe", b"{", b"[" * 100000, b"[" * 50000 + b"]" * 50000, b"null"]
)
def test_garbage_is_malformed(data):
    with pytest.raises(MalformedBundle):
        parse_manifest(data)


def test_two_payloads_for_one_slot_class_refused():
    """The second payload used to overwrite the first in the same slot target, and the
    install still passed (adversarial review #18)."""
    big = {"name": "big", "slot_class": "rootfs", "size": 10, "sha256": SHA}
    small = {"name": "small", "slot_class": "rootfs", "size": 1, "sha256": SHA}
    with pytest.raises(MalformedBundle, match=r"payloads\[1\].slot_class repeats 'rootfs'"):
        parse_manifest(raw(fields(payloads=[big, small])))
    small["slot_class"] = "appfs"
    assert len(parse_manifest(raw(fields(payloads=[big, small]))).payloads) == 2


def gz(**over):
    entry = {"name": "app", "slot_class": "app", "size": 10, "sha256": SHA}
    entry.update(compression="gzip", installed_size=20, installed_sha256=SHA)
    return dict(entry, **over)


def test_a_gzip_payload_names_its_deflate_window_for_small_boards():
    (p,) = parse_manifest(raw(fields(payloads=[gz(window_bits=12)]))).payloads
    assert p.window_bits == 12 and p.to_dict()["window_bits"] == 12
    (p,) = parse_manifest(raw(fields(payloads=[gz()]))).payloads
    assert p.window_bits == 15 and "window_bits" not in p.to_dict()  # zlib's, as before


@pytest.mark.parametrize("entry", [gz(window_bits=8), gz(window_bits=16), gz(window_bits="12"),
                                   dict(fields()["payloads"][0], window_bits=12)])  # fmt: skip
def test_a_window_out_of_range_or_on_a_plain_payload_is_malformed(entry):
    with pytest.raises(MalformedBundle, match="window_bits"):
        parse_manifest(raw(fields(payloads=[entry])))
