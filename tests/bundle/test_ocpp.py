"""OCPP SignedUpdateFirmware / UpdateFirmware: detached signature + signing cert + root."""

import base64
import datetime
import os
import shutil
import subprocess

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.bundle import ocpp
from agent.core.errors import BadSignature, Expired, MalformedBundle, UnknownKey
from agent.trust import crypto
from tests.bundle.pki import UTC, Pki, pem


@pytest.fixture
def firmware(tmp_path):
    path = tmp_path / "firmware.bin"
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several hash chunks, odd tail
    return str(path)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "ed25519"])
def test_good_detached_signature_accepted(firmware, kind):
    pki = Pki(signer_kind=kind)
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    digest = ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])
    assert len(digest) == 64


def test_signing_cert_through_an_intermediate_accepted(firmware):
    pki = Pki(intermediate=True)
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    assert ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])


def test_tampered_firmware_bad_signature(firmware):
    pki = Pki()
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    with open(firmware, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00evil")
    with pytest.raises(BadSignature):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])


def test_signature_by_another_key_bad_signature(firmware):
    pki, other = Pki(), Pki()
    sig = ocpp.sign_firmware(firmware, other.signer_key)
    with pytest.raises(BadSignature):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])


def test_signing_cert_not_chaining_to_manufacturer_root(firmware):
    pki, rogue = Pki(), Pki()
    sig = ocpp.sign_firmware(firmware, rogue.signer_key)
    with pytest.raises(UnknownKey, match="does not chain"):
        ocpp.verify_firmware(firmware, sig, rogue.signing_cert_pem, [pki.root])


def test_self_signed_signing_cert_rejected(firmware):
    pki = Pki()
    rogue = Pki()
    sig = ocpp.sign_firmware(firmware, rogue.root_key)
    with pytest.raises(UnknownKey):
        ocpp.verify_firmware(firmware, sig, pem(rogue.root), [pki.root])


def test_expired_signing_cert_rejected(firmware):
    now = datetime.datetime.now(UTC)
    pki = Pki(
        not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    with pytest.raises(Expired):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])
    # Verified at a time inside its validity it passes: expiry, not the chain, was the cause.
    then = int((now - datetime.timedelta(days=2)).timestamp())
    assert ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root], now=then)


def test_tls_server_cert_cannot_sign_firmware(firmware):
    pki = Pki(eku=ExtendedKeyUsageOID.SERVER_AUTH)
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    with pytest.raises(BadSignature, match="code signing"):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])


@pytest.mark.parametrize("sig", ["", "not base64 at all!!!", "QQ" * 2000])
def test_malformed_signature_field(firmware, sig):
    pki = Pki()
    with pytest.raises(MalformedBundle):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])


def test_garbage_certificate_malformed(firmware):
    pki = Pki()
    sig = ocpp.sign_firmware(firmware, pki.signer_key)
    with pytest.raises(MalformedBundle):
        ocpp.verify_firmware(firmware, sig, b"-----BEGIN CERTIFICATE-----\nxx\n", [pki.root])


def test_load_roots_from_pem_file(tmp_path):
    pki = Pki()
    path = tmp_path / "mfr-root.pem"
    path.write_bytes(pem(pki.root))
    assert ocpp.load_roots(str(path)) == [pki.root]


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_signature_made_by_openssl_dgst_accepted(tmp_path, firmware, kind):
    # What an OEM's release script typically runs: openssl dgst -sha256 -sign key.pem fw.bin
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl not installed")
    pki = Pki(signer_kind=kind)
    key_path = tmp_path / "signer.pem"
    key_path.write_bytes(crypto.private_pem(pki.signer_key))
    sig = subprocess.run(
        [openssl, "dgst", "-sha256", "-sign", str(key_path), firmware],
        check=True,
        capture_output=True,
    ).stdout
    b64 = base64.b64encode(sig).decode()
    opt_in = kind == "rsa"  # openssl signs RSA with PKCS#1 v1.5 unless told otherwise
    assert ocpp.verify_firmware(firmware, b64, pki.signing_cert_pem, [pki.root],
                                rsa_pkcs1v15=opt_in)  # fmt: skip
    with open(firmware, "ab") as f:
        f.write(b"!")
    with pytest.raises(BadSignature):
        ocpp.verify_firmware(firmware, b64, pki.signing_cert_pem, [pki.root], rsa_pkcs1v15=True)


def test_openssl_rsa_pss_signature_accepted_without_opt_in(tmp_path, firmware):
    # OCPP L01.FR.04 names RSA-PSS: `openssl dgst -sigopt rsa_padding_mode:pss`.
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl not installed")
    pki = Pki(signer_kind="rsa")
    key_path = tmp_path / "signer.pem"
    key_path.write_bytes(crypto.private_pem(pki.signer_key))
    sig = subprocess.run(
        [openssl, "dgst", "-sha256", "-sign", str(key_path), "-sigopt", "rsa_padding_mode:pss",
         "-sigopt", "rsa_pss_saltlen:-1", firmware],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    b64 = base64.b64encode(sig).decode()
    assert ocpp.verify_firmware(firmware, b64, pki.signing_cert_pem, [pki.root])


def test_rsa_pkcs1v15_signature_needs_the_opt_in(firmware):
    pki = Pki(signer_kind="rsa")
    sig = ocpp.sign_firmware(firmware, pki.signer_key, rsa_padding="pkcs1v15")
    with pytest.raises(BadSignature):
        ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root])
    assert ocpp.verify_firmware(firmware, sig, pki.signing_cert_pem, [pki.root],
                                rsa_pkcs1v15=True)  # fmt: skip
