"""Root rotation and revocation, modelled on python-tuf's root update rules."""

import pytest

from agent.bundle.reader import verify_file
from agent.core import keyring
from agent.core.envelope import parse_envelope
from agent.core.errors import BadSignature, Downgrade, MalformedBundle, UnknownKey
from agent.trust import crypto
from agent.trust.store import Trust
from tests.bundle.factory import device, make_bundle, make_keys, make_root, root_envelope

OLD_ROOT, NEW_ROOT = make_keys(1, tag="root-v1")[0], make_keys(1, tag="root-v2")[0]
OLD_REL, NEW_REL = (
    make_keys(1, tag="rel-v1")[0],
    make_keys(1, tag="rel-v2", keytype="ecdsa-p256")[0],
)


@pytest.fixture
def v1(tmp_path):
    return make_root(tmp_path / "root-v1.json", [OLD_ROOT], [OLD_REL], version=1)


def v2(signers, **kw):
    return root_envelope([NEW_ROOT], [NEW_REL], version=2, signers=signers, **kw)


def test_rotation_signed_by_old_and_new_root_is_applied_and_persisted(tmp_path, v1):
    state = str(tmp_path / "state")
    trust = Trust(v1, state)
    assert trust.update_root([v2([OLD_ROOT, NEW_ROOT])]).version == 2
    assert Trust(v1, state).root.version == 2  # survives a restart


def test_rotation_signed_only_by_new_root_rejected(v1):
    # An attacker who makes their own root must not be able to rotate the device to it.
    with pytest.raises(UnknownKey):
        Trust(v1).update_root([v2([NEW_ROOT])])


def test_rotation_signed_only_by_old_root_rejected(v1):
    # The new root keys must prove possession too (no rotation to keys nobody holds).
    with pytest.raises(UnknownKey):
        Trust(v1).update_root([v2([OLD_ROOT])])


def test_rotation_with_bad_old_signature_rejected(v1):
    env = parse_envelope(v2([OLD_ROOT, NEW_ROOT]))
    keyid, sig = env.signatures[0]
    env.signatures[0] = (keyid, bytes([sig[0] ^ 1]) + sig[1:])
    with pytest.raises(BadSignature):
        Trust(v1).update_root([env.encode()])


def test_revoked_key_after_rotation_rejected(tmp_path, v1):
    trust = Trust(v1, str(tmp_path / "state"))
    old_bundle, _ = make_bundle(tmp_path, keys=[OLD_REL], root_path=v1, name="old.cub")
    assert verify_file(old_bundle, trust, device())
    trust.update_root([v2([OLD_ROOT, NEW_ROOT])])
    with pytest.raises(UnknownKey):
        verify_file(old_bundle, trust, device())
    new_bundle, _ = make_bundle(tmp_path, keys=[NEW_REL], root_path=v1, name="new.cub")
    assert verify_file(new_bundle, trust, device()).version == "1.0.0"


def test_root_rollback_attack(tmp_path, v1):
    trust = Trust(v1, str(tmp_path / "state"))
    trust.update_root([v2([OLD_ROOT, NEW_ROOT])])
    with pytest.raises(Downgrade):
        trust.update_root([open(v1, "rb").read()])
    with pytest.raises(Downgrade):  # replaying the current version is no update either
        trust.update_root([v2([OLD_ROOT, NEW_ROOT])])
    assert trust.root.version == 2


def test_root_version_skip_rejected(v1):
    v3 = root_envelope([NEW_ROOT], [NEW_REL], version=3, signers=[OLD_ROOT, NEW_ROOT])
    with pytest.raises(MalformedBundle, match="apply root 2 first"):
        Trust(v1).update_root([v3])


def test_provisioned_root_must_be_self_signed(tmp_path):
    unsigned = make_root(tmp_path, [OLD_ROOT], [OLD_REL], signers=[])
    with pytest.raises(UnknownKey):
        Trust(unsigned)


def test_root_threshold_two_of_three_for_rotation(tmp_path):
    roots = make_keys(3, tag="root3")
    v1 = make_root(tmp_path, roots, [OLD_REL], root_threshold=2, signers=roots[:2])
    new = root_envelope(roots, [NEW_REL], root_threshold=2, version=2, signers=roots[:1])
    with pytest.raises(BadSignature):
        Trust(v1).update_root([new])
    new = root_envelope(roots, [NEW_REL], root_threshold=2, version=2, signers=roots[1:])
    assert Trust(v1).update_root([new]).version == 2


def test_key_claiming_wrong_type_does_not_verify():
    key = keyring.Key(crypto.keyid(NEW_REL), "ed25519", crypto.public_der(NEW_REL))
    data = b"message"
    assert not crypto.verify_key(key, crypto.sign(NEW_REL, data), data)
    key.keytype = "ecdsa-p256"
    assert crypto.verify_key(key, crypto.sign(NEW_REL, data), data)


def test_root_keyid_must_be_hash_of_key(v1):
    env = parse_envelope(open(v1, "rb").read())
    tampered = env.payload.replace(crypto.keyid(OLD_REL).encode(), b"0" * 64)
    with pytest.raises(MalformedBundle):
        keyring.parse_root(tampered)


def test_verifier_exception_counts_as_not_verified():
    root = keyring.parse_root(parse_envelope(root_envelope([OLD_ROOT], [OLD_REL])).payload)

    def explode(key, sig, data):
        raise RuntimeError("hardware crypto fault")

    with pytest.raises(BadSignature):
        keyring.verify_threshold(
            b"x", [(crypto.keyid(OLD_REL), b"s")], root.role("release"), explode
        )


# -- the daemon's lazy Trust: signatures checked at first use, never skipped -------------------


def test_lazy_trust_states_the_chain_and_verifies_it_before_accepting_a_bundle(tmp_path, v1):
    state = str(tmp_path / "state")
    Trust(v1, state).update_root([v2([OLD_ROOT, NEW_ROOT])])
    trust = Trust(v1, state, lazy=True)
    assert trust.status()["root_version"] == 2 and trust._root is None  # nothing verified yet
    new_bundle, _ = make_bundle(tmp_path, keys=[NEW_REL], root_path=v1, name="new.cub")
    assert verify_file(new_bundle, trust, device()).version
    assert trust._root.version == 2 and trust.status()["problem"] is None


def test_lazy_trust_never_accepts_under_a_planted_root_it_only_read(tmp_path, v1):
    # An attacker who can write the state dir plants "version 2" signed by their own root key
    # only: the lazy Trust states version 2 before it verified anything, but the chain is
    # verified before any bundle is, so the planted release key signs nothing.
    state = tmp_path / "state"
    state.mkdir()
    (state / "trusted-root.2.json").write_bytes(v2([NEW_ROOT]))
    trust = Trust(v1, str(state), lazy=True)
    assert trust.status()["root_version"] == 2
    planted, _ = make_bundle(tmp_path, keys=[NEW_REL], root_path=v1, name="planted.cub")
    with pytest.raises(UnknownKey):
        verify_file(planted, trust, device())
    assert trust.status()["root_version"] == 1 and "does not chain" in trust.chain_problem


def test_lazy_trust_refuses_a_missing_or_malformed_root_at_once(tmp_path):
    from agent.core.errors import ConfigError

    with pytest.raises(ConfigError):
        Trust(str(tmp_path / "absent.json"), lazy=True)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"payloadType": "x", "payload": "", "signatures": []}')
    with pytest.raises(MalformedBundle):
        Trust(str(bad), lazy=True)
