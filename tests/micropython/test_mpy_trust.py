"""The board's trust store (agent/mpy/trust.py, on the real unix port) gives every bundle the
verdict the Linux agent's (agent/trust/store.py) gives it: root and release thresholds, root
and bundle expiry, unknown keys, model, hardware revision and the anti-rollback floor."""

import os
import time

import pytest

from agent.core.errors import Rejected
from agent.trust.store import Trust
from tests.bundle.factory import DAY, HW, MODEL, device, make_bundle, make_keys, make_root

FLOOR = 2


def envelope_of(bundle):
    with open(bundle, "rb") as f:
        head = f.read(12)
        return f.read(int.from_bytes(head[8:12], "big"))


def cases(tmp_path):
    """[(name, root path, envelope bytes, security floor)]"""
    now = int(time.time())
    rel = make_keys(1, keytype="ecdsa-p256", tag="mpy-trust")
    two = make_keys(2, keytype="ed25519", tag="mpy-trust-2")
    out = []

    def add(name, floor=FLOOR, root_kwargs=None, **bundle):
        d = tmp_path / name
        d.mkdir()
        keys = bundle.pop("keys", rel)
        root = make_root(str(d), release_keys=bundle.pop("trusted", keys), **(root_kwargs or {}))
        path, _ = make_bundle(d, payloads={"app": ("app", os.urandom(64))}, keys=keys,
                              root_path=root, security_version=bundle.pop("sv", 3),
                              **bundle)  # fmt: skip
        out.append((name, root, envelope_of(path), floor))

    add("good")
    add("equal-floor", floor=3)
    add("downgrade", floor=4)
    add("stranger", trusted=make_keys(1, tag="mpy-trust-other"))
    add("wrong-model", model="OTHER")
    add("wrong-hardware", hw="rev-z")
    add("bundle-expired", created=now - 10 * DAY, expires=now - DAY)
    add("root-expired", root_kwargs={"expires": now - DAY})
    add("threshold-met", keys=two, root_kwargs={"release_threshold": 2})
    add("threshold-short", keys=two[:1], trusted=two, root_kwargs={"release_threshold": 2})
    return out


def linux_verdict(root, envelope, floor):
    try:
        Trust(root).verify(envelope, device(), installed_security_version=floor)
        return "ok"
    except Rejected as e:
        return e.reason


SCRIPT = """
import time
from agent.core.errors import Rejected
from agent.mpy.trust import Trust
from agent.core.envelope import MANIFEST_TYPE, parse_envelope
from cases import CASES, DEVICE
for name, root, envelope, floor in CASES:
    try:
        Trust(root).verify(parse_envelope(envelope, MANIFEST_TYPE), DEVICE, floor, time.time())
        verdict = "ok"
    except Rejected as e:
        verdict = e.reason
    print("VERDICT", name, verdict)
"""


def test_the_board_gives_every_bundle_the_linux_agents_verdict(tmp_path, micropython):
    found = cases(tmp_path)
    expected = {name: linux_verdict(root, env, floor) for name, root, env, floor in found}
    assert expected == {
        "good": "ok", "equal-floor": "ok", "downgrade": "downgrade", "stranger": "unknown-key",
        "wrong-model": "wrong-model", "wrong-hardware": "wrong-hardware",
        "bundle-expired": "expired", "root-expired": "expired", "threshold-met": "ok",
        "threshold-short": "bad-signature",
    }  # fmt: skip
    (tmp_path / "cases.py").write_text(
        "CASES = %r\nDEVICE = %r\n" % (found, {"model": MODEL, "hardware_revision": HW})
    )
    (tmp_path / "check.py").write_text("import sys\nsys.path.insert(0, %r)\n" % str(tmp_path)
                                       + SCRIPT)  # fmt: skip
    done = micropython.run(tmp_path / "check.py", heap="256K", timeout=300)
    lines = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("VERDICT")]
    board = dict(lines)
    assert board == expected, done.stdout + done.stderr


@pytest.mark.parametrize("keytype", ["ed25519", "ecdsa-p256"])
def test_both_key_types_sign_releases_the_board_accepts(tmp_path, micropython, keytype):
    keys = make_keys(1, keytype=keytype, tag="mpy-trust-kt")
    root = make_root(str(tmp_path), release_keys=keys)
    path, _ = make_bundle(tmp_path, payloads={"app": ("app", b"x")}, keys=keys, root_path=root)
    (tmp_path / "cases.py").write_text(
        "CASES = %r\nDEVICE = %r\n"
        % ([(keytype, root, envelope_of(path), 0)], {"model": MODEL, "hardware_revision": HW})
    )
    (tmp_path / "check.py").write_text("import sys\nsys.path.insert(0, %r)\n" % str(tmp_path)
                                       + SCRIPT)  # fmt: skip
    done = micropython.run(tmp_path / "check.py", heap="256K", timeout=300)
    assert "VERDICT %s ok" % keytype in done.stdout, done.stdout + done.stderr


# The board keeps its root's verdict from boot (agent/mpy/trust.py, bound to the files' SHA-256):
# these run the board's Trust on CPython, where the same module runs unchanged.


def board_case(tmp_path, release_key, **root_kwargs):
    """(board Trust with its root checked at boot, root path, envelope signed by release_key)"""
    from agent.core.envelope import MANIFEST_TYPE, parse_envelope
    from agent.mpy.trust import Trust as BoardTrust

    root = make_root(str(tmp_path), release_keys=[release_key], **root_kwargs)
    path, _ = make_bundle(tmp_path, payloads={"app": ("app", b"x")}, keys=[release_key],
                          root_path=root, security_version=3)  # fmt: skip
    trust = BoardTrust(root, str(tmp_path / "rotated.json"))
    trust.prepare()
    assert trust.verified is not None
    return trust, root, parse_envelope(envelope_of(path), MANIFEST_TYPE)


def test_a_root_file_tampered_after_the_boot_check_is_checked_again(tmp_path):
    key = make_keys(1, keytype="ed25519", tag="mpy-kept")[0]
    trust, root, envelope = board_case(tmp_path, key)
    assert trust.verify(envelope, device(), FLOOR, time.time()).version == "1.0.0"
    with open(root, "rb") as f:
        text = f.read()
    with open(root, "wb") as f:  # one signature character changed: the root no longer verifies
        i = text.index(b'"sig": "') + 10
        f.write(text[:i] + (b"A" if text[i : i + 1] != b"A" else b"B") + text[i + 1 :])
    with pytest.raises(Rejected) as e:
        trust.verify(envelope, device(), FLOOR, time.time())
    assert e.value.reason == "bad-signature"


def test_the_kept_root_verdict_still_expires(tmp_path):
    key = make_keys(1, keytype="ed25519", tag="mpy-kept")[0]
    now = int(time.time())
    trust, _, envelope = board_case(tmp_path, key, expires=now + DAY)
    with pytest.raises(Rejected) as e:
        trust.verify(envelope, device(), FLOOR, now + 2 * DAY)
    assert e.value.reason == "expired"


def test_a_rotated_root_placed_after_boot_is_used_at_the_next_job(tmp_path):
    old, new = make_keys(2, keytype="ed25519", tag="mpy-rotate")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    trust, _, _ = board_case(tmp_path / "v1", old)
    _, _, signed_by_new = board_case(tmp_path / "v2", new)
    with pytest.raises(Rejected) as e:
        trust.verify(signed_by_new, device(), FLOOR, time.time())
    assert e.value.reason == "unknown-key"
    make_root(trust.rotated_path, release_keys=[new], version=2)
    assert trust.verify(signed_by_new, device(), FLOOR, time.time()).version == "1.0.0"


# The verdict on a release's signatures is kept (agent/mpy/signed.py, beside the rotated root): the
# install step's check of the header the verify step verified, also in a new VM, needs no verifier.


def _release_checks(monkeypatch, envelope):
    """The list of the envelope's release signatures verified from now on (the root's, at
    each new Trust's prepare(), are not counted)."""
    from agent.mpy import verify

    real, release, seen = verify.verify_key, set(envelope.keyids), []

    def counted(key, sig, data):
        if key.keyid in release:
            seen.append(key.keyid)
        return real(key, sig, data)

    monkeypatch.setattr(verify, "verify_key", counted)
    return seen


def kept_case(tmp_path, **root_kwargs):
    """(a fresh board Trust, as a new VM builds it: the verdict kept beside its rotated
    root's file, tmp_path/signed.json; the envelope, the root path, the release key)"""
    from agent.mpy.trust import Trust as BoardTrust

    key = make_keys(1, keytype="ed25519", tag="mpy-signed")[0]
    trust, root, envelope = board_case(tmp_path, key, **root_kwargs)

    def fresh():
        board = BoardTrust(root, trust.rotated_path)
        board.prepare()
        return board

    return fresh, envelope, root, key


def test_a_verified_header_is_not_verified_again_in_a_new_vm(tmp_path, monkeypatch):
    fresh, envelope, _, _ = kept_case(tmp_path)
    verified = fresh().verify(envelope, device(), FLOOR, time.time())  # verify step
    assert verified.version == "1.0.0"
    assert os.path.exists(tmp_path / "signed.json")
    checks = _release_checks(monkeypatch, envelope)
    assert fresh().verify(envelope, device(), FLOOR, time.time(), again=True).version == "1.0.0"
    assert checks == []
    fresh().verify(envelope, device(), FLOOR, time.time())  # the verify step's: always
    assert len(checks) == 1


def test_a_kept_verdict_does_not_excuse_the_other_rules(tmp_path, monkeypatch):
    now = int(time.time())
    fresh, envelope, _, _ = kept_case(tmp_path, expires=now + DAY)
    fresh().verify(envelope, device(), FLOOR, now)
    checks = _release_checks(monkeypatch, envelope)
    for floor, at, reason in ((4, now, "downgrade"), (FLOOR, now + 2 * DAY, "expired")):
        with pytest.raises(Rejected) as e:
            fresh().verify(envelope, device(), floor, at, again=True)
        assert e.value.reason == reason
    with pytest.raises(Rejected) as e:
        fresh().verify(envelope, dict(device(), model="OTHER"), FLOOR, now, again=True)
    assert e.value.reason == "wrong-model"
    assert checks == []


def test_other_signatures_or_another_root_are_verified_again(tmp_path):
    from agent.core.envelope import Envelope

    fresh, envelope, root, _ = kept_case(tmp_path)
    fresh().verify(envelope, device(), FLOOR, time.time())
    keyid, sig = envelope.signatures[0]
    forged = Envelope(envelope.payload_type, envelope.payload,
                      [(keyid, bytes([sig[0] ^ 1]) + sig[1:])])  # fmt: skip
    with pytest.raises(Rejected) as e:  # the same manifest, another signature
        fresh().verify(forged, device(), FLOOR, time.time(), again=True)
    assert e.value.reason == "bad-signature"
    fresh().verify(envelope, device(), FLOOR, time.time())  # kept again
    stranger = make_keys(1, keytype="ed25519", tag="mpy-signed-other")
    make_root(fresh().rotated_path, release_keys=stranger, version=2)
    with pytest.raises(Rejected) as e:  # rotated to a root without the release's key
        fresh().verify(envelope, device(), FLOOR, time.time(), again=True)
    assert e.value.reason == "unknown-key"


@pytest.mark.parametrize("record", [b"", b"{not json", b'{"signed": 7}', b"[]"])
def test_a_damaged_verdict_record_means_verifying_again(tmp_path, record):
    fresh, envelope, _, _ = kept_case(tmp_path)
    (tmp_path / "signed.json").write_bytes(record)
    assert fresh().verify(envelope, device(), FLOOR, time.time(), again=True).version == "1.0.0"
    assert b'"signed": "' in (tmp_path / "signed.json").read_bytes()


def test_only_a_header_that_passed_every_rule_leaves_a_verdict(tmp_path):
    fresh, envelope, _, _ = kept_case(tmp_path)
    with pytest.raises(Rejected):
        fresh().verify(envelope, dict(device(), model="OTHER"), FLOOR, time.time())
    assert not os.path.exists(tmp_path / "signed.json")
    fresh().verify(envelope, device(), FLOOR, time.time())
    assert os.path.exists(tmp_path / "signed.json")


def test_a_trust_without_a_rotated_root_keeps_no_verdict_and_verifies_each_time(
    tmp_path, monkeypatch
):
    from agent.mpy.trust import Trust as BoardTrust

    _, envelope, root, _ = kept_case(tmp_path)
    checks = _release_checks(monkeypatch, envelope)
    board = BoardTrust(root)
    board.verify(envelope, device(), FLOOR, time.time())
    board.verify(envelope, device(), FLOOR, time.time(), again=True)
    assert len(checks) == 2
    assert not os.path.exists(tmp_path / "signed.json")
