"""Attacks on the device's trust under tampered state (issue 11 #3, #4, #7, #8, #9, #15),
each test named after the attack it defends against."""

import json
import os
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent import config as config_mod
from agent.bundle.reader import verify_file
from agent.bundle.writer import sign_envelope
from agent.cli import main
from agent.commands.root import root_fields
from agent.core import keyring
from agent.core.envelope import ROOT_TYPE, b64encode
from agent.core.errors import Expired, MalformedBundle, NotYetValid, RootRolledBack, UnknownKey
from agent.trust import crypto
from agent.trust.store import Trust
from bootloader_iface import open_from_config
from tests.bundle.factory import (
    DAY,
    HW,
    MODEL,
    device,
    make_bundle,
    make_keys,
    make_root,
    root_envelope,
)

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


# --- a device: config, simulated boot env, state dir; everything through the CLI ------------

OLD_ROOT, NEW_ROOT = make_keys(1, tag="tt-root-v1")[0], make_keys(1, tag="tt-root-v2")[0]
OLD_REL, NEW_REL = make_keys(1, tag="tt-rel-v1")[0], make_keys(1, tag="tt-rel-v2")[0]
EVIL = make_keys(1, tag="tt-evil")[0]
NOW = int(time.time())
Y2020 = 1577836800  # 2020-01-01T00:00:00Z


@pytest.fixture
def device_dir(tmp_path):
    """A charger's files: the provisioned root v1 (OLD_ROOT, OLD_REL) and agent.toml."""
    make_root(tmp_path / "root.json", [OLD_ROOT], [OLD_REL], version=1)
    (tmp_path / "boot.json").write_text(
        json.dumps({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
    )
    (tmp_path / "agent.toml").write_text(
        '[device]\nid = "cp-1"\nmodel = "%s"\nhardware_revision = "%s"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\nbooted = "A"\n'
        '[trust]\nroot = "root.json"\n[state]\ndir = "state"\n[time]\nsync_file = "synced"\n'
        % (MODEL, HW)
    )
    return tmp_path


def cli(device_dir, *argv):
    return main(["--config", str(device_dir / "agent.toml"), *argv])


def bundle(device_dir, key, name, **kw):
    path, _ = make_bundle(device_dir, keys=[key], root_path=str(device_dir / "root.json"),
                          name=name, **kw)  # fmt: skip
    return path


def v2(**kw):
    return root_envelope([NEW_ROOT], [NEW_REL], version=2, signers=[OLD_ROOT, NEW_ROOT], **kw)


def rotate(device_dir, *envelopes):
    paths = []
    for i, raw in enumerate(envelopes):
        path = device_dir / ("next-root-%d.json" % i)
        path.write_bytes(raw)
        paths.append(str(path))
    return cli(device_dir, "root", "update", *paths)


def boot_env(device_dir):
    return json.loads((device_dir / "boot.json").read_text())


# --- #4 freeze attack ----------------------------------------------------------------------------


def test_freeze_attack_clock_at_1970_expired_bundle_refused(tmp_path):
    """An RTC that lost power reads 1970: a bundle that expired in 2020 must stay expired when
    the root the device trusts was created later (its `created` is a floor of time)."""
    root = make_root(tmp_path / "root.json", [OLD_ROOT], [OLD_REL], created=NOW - DAY)
    stale, _ = make_bundle(tmp_path, keys=[OLD_REL], root_path=root, created=Y2020,
                           expires=Y2020 + 31 * DAY, name="stale.cub")  # fmt: skip
    for clock in (0, Y2020 + 14 * DAY):  # lost power; set back into the bundle's validity
        with pytest.raises(Expired):
            verify_file(stale, Trust(root), device(), now=clock)


def test_freeze_attack_floor_from_an_installed_bundle_survives_a_clock_reset(device_dir):
    """After installing a bundle created yesterday, a clock at 1970 cannot revive a bundle
    that expired two days ago; the floor is kept in the state dir and the boot env."""
    fresh = bundle(device_dir, OLD_REL, "fresh.cub", created=NOW - DAY, version="1.1.0")
    (device_dir / "b.img").write_bytes(b"")
    assert cli(device_dir, "install", fresh, "--no-switch") == 0
    assert int(boot_env(device_dir)["CHARGER_TIME_FLOOR"]) == NOW - DAY
    stale = bundle(device_dir, OLD_REL, "stale.cub", created=NOW - 30 * DAY,
                   expires=NOW - 2 * DAY)  # fmt: skip
    trust = Trust.from_config(config_mod.load(str(device_dir / "agent.toml")), clock=lambda: 0)
    with pytest.raises(Expired):
        verify_file(stale, trust, device())
    (device_dir / "state" / "floors.json").unlink()  # the boot env still remembers
    boot = open_from_config(config_mod.load(str(device_dir / "agent.toml")))
    trust = Trust.from_config(config_mod.load(str(device_dir / "agent.toml")), lambda: 0, boot)
    with pytest.raises(Expired):
        verify_file(stale, trust, device())


def test_freeze_attack_last_time_sync_is_a_floor(device_dir):
    """The last successful time sync (systemd-timesyncd's clock file) bounds "now" too; a
    sync file dated far beyond the clock is a forgery and is ignored."""
    stale = bundle(device_dir, OLD_REL, "stale.cub", created=NOW - 30 * DAY,
                   expires=NOW - 3600)  # fmt: skip
    cfg = config_mod.load(str(device_dir / "agent.toml"))
    synced = device_dir / "synced"
    synced.write_text("")
    os.utime(synced, (NOW, NOW))
    with pytest.raises(Expired):
        verify_file(stale, Trust.from_config(cfg, clock=lambda: NOW - DAY), device())
    os.utime(synced, (NOW + 365 * DAY, NOW + 365 * DAY))  # forged: a year past the clock
    trust = Trust.from_config(cfg, clock=lambda: NOW - 2 * DAY)
    assert verify_file(stale, trust, device()).version == "1.0.0"


def test_bundle_created_far_in_the_future_refused(tmp_path):
    """A `created` more than a day past the device's time is refused (never adopted as a
    floor of time, which would make every later bundle look expired); an hour ahead is a
    signer's clock skew and passes."""
    root = make_root(tmp_path / "root.json", [OLD_ROOT], [OLD_REL])
    future, _ = make_bundle(tmp_path, keys=[OLD_REL], root_path=root, created=NOW + 10 * DAY,
                            expires=NOW + 40 * DAY, name="future.cub")  # fmt: skip
    with pytest.raises(NotYetValid, match="more than 86400 s after"):
        verify_file(future, Trust(root), device(), now=NOW)
    skewed, _ = make_bundle(tmp_path, keys=[OLD_REL], root_path=root, created=NOW + 3600,
                            name="skewed.cub")  # fmt: skip
    assert verify_file(skewed, Trust(root), device(), now=NOW).version == "1.0.0"


def test_created_ahead_of_a_clock_that_lost_power_says_to_sync_the_clock(tmp_path):
    root = make_root(tmp_path / "root.json", [OLD_ROOT], [OLD_REL], created=NOW - 400 * DAY)
    fresh, _ = make_bundle(tmp_path, keys=[OLD_REL], root_path=root, name="fresh.cub")
    with pytest.raises(NotYetValid) as refused:
        verify_file(fresh, Trust(root), device(), now=0)
    assert "RTC probably lost power" in str(refused.value)
    assert refused.value.exit_code == Expired.exit_code


# --- #7 trust anchor on the data partition ------------------------------------------------------


def test_self_signed_root_planted_in_the_state_dir_is_not_trusted(device_dir, capsys):
    evil_root = root_envelope([EVIL], [EVIL], version=7)
    (device_dir / "state").mkdir()
    (device_dir / "state" / "trusted-root.json").write_bytes(evil_root)  # the legacy name
    evil = bundle(device_dir, EVIL, "evil.cub", security_version=99)
    assert cli(device_dir, "bundle", "verify", evil) == UnknownKey.exit_code
    for version in (2, 7):  # and under the chain's own names
        (device_dir / "state" / ("trusted-root.%d.json" % version)).write_bytes(
            root_envelope([EVIL], [EVIL], version=version)
        )
    assert cli(device_dir, "bundle", "verify", evil) == UnknownKey.exit_code
    good = bundle(device_dir, OLD_REL, "good.cub")
    assert cli(device_dir, "bundle", "verify", good) == 0  # v1 still works; the fake is logged


def test_rotated_chain_is_reverified_at_load(device_dir):
    assert rotate(device_dir, v2()) == 0
    cfg = config_mod.load(str(device_dir / "agent.toml"))
    assert Trust.from_config(cfg).root.version == 2
    # A v2 re-signed by the attacker's own root key does not chain from v1.
    forged = root_envelope([NEW_ROOT], [EVIL], version=2, signers=[NEW_ROOT])
    (device_dir / "state" / "trusted-root.2.json").write_bytes(forged)
    trust = Trust.from_config(cfg, boot=open_from_config(cfg))
    assert trust.root.version == 1 and "does not chain" in trust.chain_problem
    with pytest.raises(RootRolledBack):  # v2 was trusted before: v1 is not good enough now
        verify_file(bundle(device_dir, EVIL, "evil.cub"), trust, device())


def test_persisted_root_older_than_the_newest_seen_is_refused(device_dir, capsys):
    v3 = root_envelope([NEW_ROOT], [NEW_REL], version=3, signers=[NEW_ROOT])
    assert rotate(device_dir, v2(), v3) == 0
    (device_dir / "state" / "trusted-root.3.json").unlink()  # roll the chain back to v2
    capsys.readouterr()
    assert cli(device_dir, "bundle", "verify", bundle(device_dir, NEW_REL, "b.cub")) == 13
    assert "older than version 3" in capsys.readouterr().err


# --- #8 deleting the rotated roots --------------------------------------------------------------


def test_deleting_trusted_roots_does_not_unrevoke_keys(device_dir, capsys):
    assert rotate(device_dir, v2()) == 0  # v2 revokes OLD_REL
    old = bundle(device_dir, OLD_REL, "old.cub")
    assert cli(device_dir, "bundle", "verify", old) == UnknownKey.exit_code
    for name in ("trusted-root.2.json", "floors.json"):  # the data partition wiped
        (device_dir / "state" / name).unlink()
    capsys.readouterr()
    assert cli(device_dir, "install", old, "--no-switch") == RootRolledBack.exit_code
    err = capsys.readouterr().err
    assert "root version 1 is older than version 2" in err and "root update" in err
    assert rotate(device_dir, v2()) == 0  # re-applying the rotation heals it
    assert cli(device_dir, "bundle", "verify", bundle(device_dir, NEW_REL, "new.cub")) == 0
    assert cli(device_dir, "bundle", "verify", old) == UnknownKey.exit_code


# --- #9 a running daemon and `root update` ------------------------------------------------------


def test_running_daemon_verifies_with_the_root_rotated_by_the_cli(device_dir):
    cfg = config_mod.load(str(device_dir / "agent.toml"))
    daemons_trust = Trust.from_config(cfg)  # built once, when the daemon started
    old = bundle(device_dir, OLD_REL, "old.cub")
    assert verify_file(old, daemons_trust, device()).version == "1.0.0"
    assert rotate(device_dir, v2()) == 0  # another process rotates: v2 revokes OLD_REL
    with pytest.raises(UnknownKey):
        verify_file(old, daemons_trust, device())
    assert verify_file(bundle(device_dir, NEW_REL, "new.cub"), daemons_trust, device())


# --- #15 `root update` with an expired root ------------------------------------------------------


def test_root_update_expired_root_is_reported_as_applied_but_expired(device_dir, capsys):
    expired = v2(expires=NOW - DAY, created=NOW - 30 * DAY)
    assert rotate(device_dir, expired) == Expired.exit_code
    err = capsys.readouterr().err
    assert "root version 2 was applied" in err and "expired at" in err
    assert "until root version 3 is applied" in err
    assert (device_dir / "state" / "trusted-root.2.json").read_bytes() == expired
    assert int(boot_env(device_dir)["CHARGER_ROOT_FLOOR"]) == 2
    new = bundle(device_dir, NEW_REL, "new.cub")
    assert cli(device_dir, "bundle", "verify", new) == Expired.exit_code


def test_root_update_created_far_in_the_future_is_not_applied(device_dir, capsys):
    assert rotate(device_dir, v2(created=NOW + 30 * DAY)) == Expired.exit_code
    assert "created at" in capsys.readouterr().err
    assert not (device_dir / "state" / "trusted-root.2.json").exists()
