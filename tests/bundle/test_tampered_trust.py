"""Attacks on the device's trust under tampered state (issue 11 #3, #4, #7, #8, #9, #15),
each test named after the attack it defends against."""

import json
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.bundle.writer import sign_envelope
from agent.commands.root import root_fields
from agent.core import keyring
from agent.core.envelope import ROOT_TYPE, b64encode
from agent.core.errors import MalformedBundle
from agent.trust import crypto
from agent.trust.store import Trust
from tests.bundle.factory import DAY, make_keys

P256_COMPRESSED_SPKI = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")


def aliased_root(root_key, rel):
    """Root JSON whose release role lists `rel` twice: as the uncompressed and the
    compressed point (two DER encodings, so two key ids), threshold 2."""
    alias = P256_COMPRESSED_SPKI + rel.public_key().public_bytes(
        Encoding.X962, PublicFormat.CompressedPoint
    )
    fields = root_fields([root_key], [rel], 1, 1, 1, int(time.time()) + DAY)
    ids = [crypto.keyid(rel), keyring.keyid_of(alias)]
    fields["keys"][ids[1]] = {"keytype": "ecdsa-p256", "public": b64encode(alias)}
    fields["roles"]["release"] = {"keyids": ids, "threshold": 2}
    return json.dumps(fields, sort_keys=True).encode(), alias


def test_key_id_aliasing_one_ecdsa_key_listed_twice_is_refused(tmp_path):
    """#3: one private key must never meet a threshold of 2 under two encodings of itself."""
    root_key = make_keys(1, tag="alias-root")[0]
    rel = make_keys(1, tag="alias-rel", keytype="ecdsa-p256")[0]
    raw, _ = aliased_root(root_key, rel)
    with pytest.raises(MalformedBundle, match="canonical"):
        keyring.parse_root(raw)
    path = tmp_path / "root.json"
    path.write_bytes(sign_envelope(ROOT_TYPE, raw, [root_key]).encode())
    with pytest.raises(MalformedBundle, match="canonical"):
        Trust(str(path))


def test_key_id_aliasing_non_canonical_key_never_verifies():
    """#3, second line of defence: the adapter verifies only with a key whose DER is the
    canonical encoding of itself, whatever reached it."""
    rel = make_keys(1, tag="alias-rel", keytype="ecdsa-p256")[0]
    _, alias = aliased_root(make_keys(1, tag="alias-root")[0], rel)
    data = b"signed bytes"
    sig = crypto.sign(rel, data)
    canonical = keyring.Key(crypto.keyid(rel), "ecdsa-p256", crypto.public_der(rel))
    assert crypto.verify_key(canonical, sig, data)
    assert not crypto.verify_key(keyring.Key("x", "ecdsa-p256", alias), sig, data)
