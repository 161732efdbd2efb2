"""The board's trust store (agent/mpy/trust.py, on the real unix port) gives every bundle the
verdict the Linux agent's (agent/trust/store.py) gives it: root and release thresholds, root
and bundle expiry, unknown keys, model, hardware revision and the anti-rollback floor."""

import json
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


# The verify step's verdict on a release's header is kept with the facts it planned
# (agent/mpy/signed.py, beside the rotated root): the install step's check of the same header,
# also in a new VM, needs no verifier and no manifest parser (agent/mpy/header.py).

VERSION = "1.0.0"  # make_bundle's
SLOT = 1 << 20  # the partition's size the install's check fits the payload to


def _release_checks(monkeypatch, keyids):
    """The list of the release signatures verified from now on (the root's, at each new
    Trust's prepare(), are not counted) and of the manifests parsed."""
    from agent.core import manifest
    from agent.mpy import verify

    real, real_parse, seen = verify.verify_key, manifest.parse_manifest, []

    def counted(key, sig, data):
        if key.keyid in keyids:
            seen.append(key.keyid)
        return real(key, sig, data)

    def parsed(raw):
        seen.append("parsed")
        return real_parse(raw)

    monkeypatch.setattr(verify, "verify_key", counted)
    monkeypatch.setattr(manifest, "parse_manifest", parsed)
    return seen


def kept_case(tmp_path, **root_kwargs):
    """(fresh: a board Trust as a new VM builds it, the verdict kept beside its rotated root's
    file, tmp_path/signed.json; the raw envelope; the release's keyids)"""
    from agent.mpy.trust import Trust as BoardTrust

    key = make_keys(1, keytype="ed25519", tag="mpy-signed")[0]
    trust, root, envelope = board_case(tmp_path, key, **root_kwargs)

    def fresh(rotated=True, prepare=True):
        board = BoardTrust(root, trust.rotated_path if rotated else None)
        if prepare:
            board.prepare()
        return board

    return fresh, envelope_of(tmp_path / "bundle.cub"), set(envelope.keyids)


def verify_step(trust, raw, dev=None, floor=FLOOR, now=None, slot_class="app"):
    from agent.mpy import header

    now = time.time() if now is None else now
    return header.verify(trust, raw, dev or device(), floor, now, VERSION, slot_class)


def install_check(trust, raw, dev=None, floor=FLOOR, now=None, version=VERSION, size=SLOT,
                  window=15):  # fmt: skip
    from agent.mpy import header

    now = time.time() if now is None else now
    return header.check(trust, raw, dev or device(), floor, now, size,
                        {"max_window_bits": window}, version)  # fmt: skip


def test_a_verified_header_is_not_verified_again_in_a_new_vm(tmp_path, monkeypatch):
    fresh, raw, keyids = kept_case(tmp_path)
    planned = verify_step(fresh(), raw)
    assert planned["version"] == VERSION and planned["name"] == "app"
    assert os.path.exists(tmp_path / "signed.json")
    seen = _release_checks(monkeypatch, keyids)
    facts = install_check(fresh(), raw)
    assert seen == []  # neither the signatures' arithmetic nor the manifest's parser
    assert dict(facts, header_size=None, header_sha256=None) == dict(
        planned, header_size=None, header_sha256=None
    )
    os.remove(tmp_path / "signed.json")  # the same facts as a check that verifies in full
    assert install_check(fresh(), raw) == facts
    assert len(seen) == 2
    verify_step(fresh(), raw)  # the verify step's: always in full
    assert len(seen) == 4


def test_the_install_check_on_a_kept_verdict_does_not_verify_the_root(tmp_path, monkeypatch):
    """The install's VM skips the root at boot (Agent.start): the kept verdict is bound to
    the root files the verify step verified, and keeps that root's expiry."""
    now = int(time.time())
    fresh, raw, _ = kept_case(tmp_path, expires=now + DAY)
    verify_step(fresh(), raw, now=now)
    board = fresh(prepare=False)
    roots = []
    real = board._verify_root
    monkeypatch.setattr(board, "_verify_root", lambda f: roots.append(f) or real(f))
    assert install_check(board, raw, now=now)["version"] == VERSION
    assert roots == [] and board.verified is None
    with pytest.raises(Rejected) as e:  # the kept root's expiry, checked without the root
        install_check(board, raw, now=now + 2 * DAY)
    assert e.value.reason == "expired" and "trusted root" in e.value.message
    assert roots == []
    with open(board.root_path, "ab") as f:  # other root bytes (the same root, parsed):
        f.write(b" ")  # not the ones the verdict is bound to, so verified in full again
    assert install_check(board, raw, now=now)["version"] == VERSION
    assert len(roots) == 1


def test_a_kept_verdict_does_not_excuse_the_rules_that_may_change(tmp_path, monkeypatch):
    now = int(time.time())
    fresh, raw, keyids = kept_case(tmp_path, expires=now + DAY)
    verify_step(fresh(), raw, now=now)
    seen = _release_checks(monkeypatch, keyids)
    for reason, change in (
        ("downgrade", {"floor": 4}),
        ("expired", {"now": now + 2 * DAY}),  # the root's expiry: it expires first here
        ("version-mismatch", {"version": "9.9.9"}),
        ("no-space", {"size": 0}),  # the one-byte payload
    ):
        with pytest.raises(Rejected) as e:
            install_check(fresh(), raw, **dict({"now": now}, **change))
        assert e.value.reason == reason
    assert seen == []


def test_the_bundles_own_expiry_is_checked_on_the_kept_facts(tmp_path, monkeypatch):
    fresh, raw, keyids = kept_case(tmp_path)
    verify_step(fresh(), raw)
    seen = _release_checks(monkeypatch, keyids)
    with open(tmp_path / "signed.json") as f:
        expires = json.load(f)["facts"]["expires"]
    with pytest.raises(Rejected) as e:  # the root outlives the bundle (make_root's default)
        install_check(fresh(), raw, now=expires)
    assert e.value.reason == "expired" and "bundle %s" % VERSION in e.value.message
    assert seen == []


def test_another_device_or_other_signatures_or_another_root_are_verified_again(
    tmp_path, monkeypatch
):
    from agent.core.envelope import MANIFEST_TYPE, Envelope, parse_envelope

    fresh, raw, keyids = kept_case(tmp_path)
    verify_step(fresh(), raw)
    seen = _release_checks(monkeypatch, keyids)
    with pytest.raises(Rejected) as e:  # the compatibility rule's inputs changed
        install_check(fresh(), raw, dict(device(), model="OTHER"))
    assert e.value.reason == "wrong-model" and len(seen) == 2
    envelope = parse_envelope(raw, MANIFEST_TYPE)
    keyid, sig = envelope.signatures[0]
    forged = Envelope(envelope.payload_type, envelope.payload,
                      [(keyid, bytes([sig[0] ^ 1]) + sig[1:])])  # fmt: skip
    with pytest.raises(Rejected) as e:  # the same manifest, another signature
        install_check(fresh(), forged.encode())
    assert e.value.reason == "bad-signature"
    verify_step(fresh(), raw)  # kept again
    stranger = make_keys(1, keytype="ed25519", tag="mpy-signed-other")
    make_root(fresh().rotated_path, release_keys=stranger, version=2)
    with pytest.raises(Rejected) as e:  # rotated to a root without the release's key
        install_check(fresh(), raw)
    assert e.value.reason == "unknown-key"


def _damaged(record):
    """Records that hold the right key but not the facts the install needs."""
    facts = record["facts"]
    return [
        dict(record, facts=None),
        dict(record, facts=[facts]),
        dict(record, facts=dict((k, v) for k, v in facts.items() if k != "size")),
        dict(record, facts=dict(facts, expires=str(facts["expires"]))),
        dict(record, facts=dict(facts, sha256=None)),
        dict((k, v) for k, v in record.items() if k != "root"),
        dict(record, root=[record["root"][0]]),
        dict(record, root=[str(record["root"][0]), record["root"][1]]),
        dict(record, root=None),
    ]


@pytest.mark.parametrize("record", [b"", b"{not json", b'{"signed": 7}', b"[]"] + list(range(9)))
def test_a_damaged_verdict_record_means_verifying_again(tmp_path, monkeypatch, record):
    fresh, raw, keyids = kept_case(tmp_path)
    planned = verify_step(fresh(), raw)
    path = tmp_path / "signed.json"
    if isinstance(record, int):
        record = json.dumps(_damaged(json.loads(path.read_text()))[record]).encode()
    path.write_bytes(record)
    seen = _release_checks(monkeypatch, keyids)
    facts = install_check(fresh(), raw)
    assert seen == [next(iter(keyids)), "parsed"]  # verified in full, and kept anew
    assert facts["installed_sha256"] == planned["installed_sha256"]
    assert json.loads(path.read_text())["facts"]["size"] == planned["size"]


def test_only_a_header_that_passed_every_rule_leaves_a_verdict(tmp_path):
    fresh, raw, _ = kept_case(tmp_path)
    with pytest.raises(Rejected) as e:
        verify_step(fresh(), raw, dict(device(), model="OTHER"))
    assert e.value.reason == "wrong-model"
    with pytest.raises(Rejected) as e:  # a bundle without exactly one payload for the board
        verify_step(fresh(), raw, slot_class="firmware")
    assert e.value.reason == "malformed"
    assert not os.path.exists(tmp_path / "signed.json")
    verify_step(fresh(), raw)
    assert os.path.exists(tmp_path / "signed.json")


def test_a_trust_without_a_rotated_root_keeps_no_verdict_and_verifies_each_time(
    tmp_path, monkeypatch
):
    fresh, raw, keyids = kept_case(tmp_path)
    seen = _release_checks(monkeypatch, keyids)
    verify_step(fresh(rotated=False), raw)
    install_check(fresh(rotated=False), raw)
    assert len(seen) == 4
    assert not os.path.exists(tmp_path / "signed.json")
