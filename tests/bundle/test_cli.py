"""The release engineer's journey through agent.cli.main, and the exit codes an operator sees."""

import json
import os
import stat

import pytest

from agent.cli import main
from agent.core.errors import BadSignature, Downgrade, UnknownKey, WrongHardware, WrongModel
from tests.bundle.test_attacks import rewrite, split


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rootfs.img").write_bytes(os.urandom(200000))
    (tmp_path / "cop.bin").write_bytes(b"coprocessor firmware")
    assert main(["keygen", "--type", "ed25519", "--out", "root1"]) == 0
    assert main(["keygen", "--type", "ecdsa-p256", "--out", "rel1"]) == 0
    assert main(["root", "create", "--root-key", "root1.pub", "--release-key", "rel1.pub",
                 "--sign", "root1.key", "-o", "root.json"]) == 0  # fmt: skip
    return tmp_path


def create(out="b.cub", key="rel1.key", sv="3", extra=()):
    return main(["bundle", "create", "--key", key, "--version", "1.2.0",
                 "--security-version", sv, "--model", "ACME", "--hw-rev", "rev-b",
                 "--expires", "30", "--payload", "rootfs:rootfs:rootfs.img:gzip",
                 "--payload", "cop:coprocessor:cop.bin", "-o", out, *extra])  # fmt: skip


def test_keygen_writes_private_key_0600_and_prints_keyid(work, capsys):
    assert main(["keygen", "--type", "ecdsa-p256", "--out", "k"]) == 0
    keyid = capsys.readouterr().out.split()[0]
    assert len(keyid) == 64
    assert stat.S_IMODE(os.stat("k.key").st_mode) == 0o600
    assert b"PUBLIC KEY" in (work / "k.pub").read_bytes()
    assert main(["keygen", "--out", "k"]) == 1  # never overwrites a key


def test_create_verify_inspect_round_trip(work, capsys):
    assert create() == 0
    assert main(["bundle", "verify", "b.cub", "--root", "root.json",
                 "--model", "ACME", "--hw-rev", "rev-b"]) == 0  # fmt: skip
    assert "OK b.cub" in capsys.readouterr().out
    assert main(["bundle", "inspect", "b.cub", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["manifest"]["version"] == "1.2.0" and doc["verified"] is False
    assert [p["slot_class"] for p in doc["manifest"]["payloads"]] == ["rootfs", "coprocessor"]
    assert main(["bundle", "inspect", "b.cub"]) == 0
    assert "NOT verified" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,error",
    [
        (["--model", "OTHER", "--hw-rev", "rev-b"], WrongModel),
        (["--model", "ACME", "--hw-rev", "rev-z"], WrongHardware),
        (["--installed-security-version", "4"], Downgrade),
    ],
)
def test_policy_failures_exit_with_their_code(work, capsys, args, error):
    assert create() == 0
    assert main(["bundle", "verify", "b.cub", "--root", "root.json", *args]) == error.exit_code
    assert "error:" in capsys.readouterr().err


def test_unknown_key_exit_code(work):
    main(["keygen", "--out", "stranger"])
    assert create(key="stranger.key") == 0
    assert main(["bundle", "verify", "b.cub", "--root", "root.json"]) == UnknownKey.exit_code


def test_tampered_bundle_exit_code(work):
    assert create() == 0
    env, payloads = split(str(work / "b.cub"))
    env.payload = env.payload.replace(b'"security_version": 3', b'"security_version": 7')
    rewrite(str(work / "b.cub"), env, payloads)
    assert main(["bundle", "verify", "b.cub", "--root", "root.json"]) == BadSignature.exit_code


def test_root_rotation_through_the_cli_and_config(work, capsys):
    for name in ("root2", "rel2"):
        assert main(["keygen", "--out", name]) == 0
    assert main(["root", "create", "--root-key", "root2.pub", "--release-key", "rel2.pub",
                 "--version", "2", "-o", "root-v2.json"]) == 0  # fmt: skip
    assert main(["root", "sign", "root-v2.json", "--key", "root1.key", "--key", "root2.key"]) == 0
    capsys.readouterr()
    assert main(["root", "show", "root-v2.json"]) == 0
    assert "threshold met" in capsys.readouterr().out
    (work / "agent.toml").write_text(
        '[device]\nid = "cp-1"\nmodel = "ACME"\nhardware_revision = "rev-b"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\nbooted = "A"\n'
        '[trust]\nroot = "root.json"\n[state]\ndir = "."\n'
    )
    provisioned = (work / "root.json").read_bytes()
    assert main(["--config", "agent.toml", "root", "update", "root-v2.json"]) == 0
    assert (work / "root.json").read_bytes() == provisioned  # the factory root stays as it was
    assert (work / "trusted-root.2.json").read_bytes() == (work / "root-v2.json").read_bytes()
    assert create(key="rel2.key") == 0
    assert main(["--config", "agent.toml", "bundle", "verify", "b.cub"]) == 0
    assert create(key="rel1.key") == 0  # the old release key is revoked by version 2
    assert main(["--config", "agent.toml", "bundle", "verify", "b.cub"]) == UnknownKey.exit_code


def test_bad_payload_spec_is_a_config_error(work):
    assert main(["bundle", "create", "--key", "rel1.key", "--version", "1.0.0",
                 "--security-version", "1", "--model", "M", "--hw-rev", "r",
                 "--payload", "nocolons", "-o", "x.cub"]) == 20  # fmt: skip


def test_verify_ocpp_command(work, capsys):
    from agent.bundle import ocpp
    from agent.trust.manufacturer import CertificateProblem
    from tests.bundle.pki import Pki, pem

    pki, rogue = Pki(), Pki()
    (work / "fw.bin").write_bytes(os.urandom(5000))
    (work / "fw.sig").write_text(ocpp.sign_firmware(str(work / "fw.bin"), pki.signer_key))
    (work / "signer.pem").write_bytes(pki.signing_cert_pem)
    (work / "mfr.pem").write_bytes(pem(pki.root))
    (work / "rogue.pem").write_bytes(pem(rogue.root))
    base = ["bundle", "verify-ocpp", "fw.bin", "--signature", "fw.sig", "--cert", "signer.pem"]
    assert main(base + ["--mfr-root", "mfr.pem"]) == 0
    assert "OK fw.bin" in capsys.readouterr().out
    # The agent's own check: not issued by this root, or with an intermediate, is refused.
    assert main(base + ["--mfr-root", "rogue.pem"]) == CertificateProblem.exit_code == 30
    (work / "chain.pem").write_bytes(pki.signing_cert_pem + pem(pki.root))
    chain = ["bundle", "verify-ocpp", "fw.bin", "--signature", "fw.sig", "--cert", "chain.pem"]
    assert main(chain + ["--mfr-root", "mfr.pem"]) == 30
    assert "intermediates" in capsys.readouterr().err
    (work / "fw.bin").write_bytes(os.urandom(5000))
    assert main(base + ["--mfr-root", "mfr.pem"]) == BadSignature.exit_code
    assert main(["bundle", "verify-ocpp", "nothing.bin", "--signature", "fw.sig", "--cert",
                 "signer.pem", "--mfr-root", "mfr.pem"]) == 20  # fmt: skip


def test_root_show_json(work, capsys):
    capsys.readouterr()
    assert main(["root", "show", "root.json", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1 and doc["roles"]["release"]["threshold"] == 1
    assert doc["status"].startswith("self-signed")


def test_window_bits_are_signed_into_the_manifest_and_the_payload_inflates(work, capsys):
    assert create(extra=("--window-bits", "12")) == 0
    assert main(["bundle", "verify", "b.cub", "--root", "root.json",
                 "--model", "ACME", "--hw-rev", "rev-b"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["bundle", "inspect", "b.cub", "--json"]) == 0
    payloads = json.loads(capsys.readouterr().out)["manifest"]["payloads"]
    assert [p.get("window_bits") for p in payloads] == [12, None]  # gzip only
    assert create(out="c.cub", extra=("--window-bits", "16")) == 20  # ConfigError
