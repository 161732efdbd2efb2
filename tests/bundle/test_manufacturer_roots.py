"""The firmware-signing roots a CSMS manages (OCPP ManufacturerRootCertificate) and the check
of a signing certificate against them, before an update request is accepted."""

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.core.errors import BadSignature
from agent.trust import crypto
from agent.trust.manufacturer import INVALID, REVOKED, CertificateProblem, ManufacturerRoots
from tests.bundle.pki import UTC, Pki, make_cert, new_key, pem


@pytest.fixture
def store(tmp_path):
    return ManufacturerRoots(str(tmp_path / "roots"))


def test_install_list_and_delete_a_root(store):
    pki = Pki()
    assert store.ids() == []
    assert store.install(pem(pki.root)) == "Accepted"
    [ids] = store.ids()
    assert ids["hash_algorithm"] == "SHA256"
    assert ids["issuer_name_hash"] == hashlib.sha256(pki.root.subject.public_bytes()).hexdigest()
    assert int(ids["serial_number"], 16) == pki.root.serial_number
    assert store.check(pki.signing_cert_pem).subject == pki.signer.subject
    assert store.delete(dict(ids, serial_number="1")) == "NotFound"
    assert store.delete(dict(ids, serial_number=ids["serial_number"].upper())) == "Accepted"
    assert store.ids() == []
    with pytest.raises(CertificateProblem, match="no ManufacturerRootCertificate"):
        store.check(pki.signing_cert_pem)


def test_provisioned_root_counts_but_cannot_be_deleted(tmp_path):
    pki = Pki()
    path = tmp_path / "oem-root.pem"
    path.write_bytes(pem(pki.root))
    store = ManufacturerRoots(str(tmp_path / "roots"), provisioned=[str(path)])
    assert store.check(pki.signing_cert_pem)
    assert store.delete(store.ids()[0]) == "Failed"
    assert path.exists()


@pytest.mark.parametrize("what", ["garbage", "leaf", "expired", "two"])
def test_install_refuses_what_is_not_a_current_root(store, what):
    pki = Pki()
    now = datetime.datetime.now(UTC)
    bad = {
        "garbage": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "leaf": pem(pki.signer),
        "expired": pem(make_cert(new_key(), "Old Root", ca=True,
                                 not_before=now - datetime.timedelta(days=90),
                                 not_after=now - datetime.timedelta(days=1))),
        "two": pem(pki.root, Pki().root),
    }[what]  # fmt: skip
    assert store.install(bad) == "Rejected"
    assert store.ids() == []


def test_signing_cert_from_another_manufacturer_is_invalid(store):
    pki, rogue = Pki(), Pki()
    store.install(pem(pki.root))
    with pytest.raises(CertificateProblem) as e:
        store.check(rogue.signing_cert_pem)
    assert e.value.status == INVALID


def test_intermediate_certificates_are_refused(store):
    # OCPP L01: "The manufacturer SHALL NOT use intermediate certificates".
    pki = Pki(intermediate=True)
    store.install(pem(pki.root))
    with pytest.raises(CertificateProblem, match="intermediates"):
        store.check(pki.signing_cert_pem)
    with pytest.raises(CertificateProblem):
        store.check(pem(pki.signer))  # nor the leaf alone: it is not issued by the root


def test_expired_signing_cert_is_invalid(store):
    now = datetime.datetime.now(UTC)
    pki = Pki(not_before=now - datetime.timedelta(days=30),
              not_after=now - datetime.timedelta(days=1))  # fmt: skip
    store.install(pem(pki.root))
    with pytest.raises(CertificateProblem, match="valid"):
        store.check(pki.signing_cert_pem)


def _crl(pki, serials, signer_key=None):
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root.subject)
        .last_update(now - datetime.timedelta(days=1))
        .next_update(now + datetime.timedelta(days=30))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(signer_key or pki.root_key, hashes.SHA256())


def test_revoked_signing_cert_is_revoked(tmp_path):
    pki = Pki()
    crl = tmp_path / "mfr.crl"
    from cryptography.hazmat.primitives.serialization import Encoding

    crl.write_bytes(_crl(pki, [pki.signer.serial_number]).public_bytes(Encoding.DER))
    store = ManufacturerRoots(str(tmp_path / "roots"), crls=[str(crl)])
    store.install(pem(pki.root))
    with pytest.raises(CertificateProblem) as e:
        store.check(pki.signing_cert_pem)
    assert e.value.status == REVOKED and e.value.reason == "revoked-certificate"


def test_revocation_list_not_signed_by_the_root_is_ignored(tmp_path):
    pki = Pki()
    forged = _crl(pki, [pki.signer.serial_number], signer_key=new_key())
    from cryptography.hazmat.primitives.serialization import Encoding

    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "forged.crl").write_bytes(forged.public_bytes(Encoding.PEM))
    store = ManufacturerRoots(str(tmp_path / "roots"))
    store.install(pem(pki.root))
    assert store.check(pki.signing_cert_pem)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_verify_signature_over_the_whole_file_digest(store, kind):
    pki = Pki(signer_kind=kind)
    store.install(pem(pki.root))
    digest = hashlib.sha256(b"firmware bytes").digest()
    sig = crypto.sign_digest(pki.signer_key, digest)
    import base64

    b64 = base64.b64encode(sig).decode()
    assert store.verify(digest, b64, pki.signing_cert_pem)
    with pytest.raises(BadSignature):
        store.verify(hashlib.sha256(b"other bytes").digest(), b64, pki.signing_cert_pem)


def test_signing_cert_with_a_malformed_subject_is_invalid_not_a_crash(store):
    """Found by fuzzing (tests/fuzz, everest-request): a PEM that loads, whose subject is not
    valid UTF-8, raised ValueError from cryptography's lazy parsing in the middle of the chain
    check; the EVerest request's worker died and EVerest never got an answer."""
    import base64

    from cryptography.hazmat.primitives import serialization

    pki = Pki()
    store.install(pem(pki.root))
    der = pki.signer.public_bytes(serialization.Encoding.DER)
    assert der.count(b"Firmware Signer") == 1
    bad = der.replace(b"Firmware Signer", b"Fi\x82mware Signer")
    text = base64.encodebytes(bad).decode().replace("\n", "")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    forged = "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % "\n".join(lines)
    with pytest.raises(CertificateProblem, match="malformed") as e:
        store.check(forged)
    assert e.value.status == INVALID


def test_signing_cert_with_an_invalid_x509_version_is_invalid_not_a_crash(store):
    """Found by fuzzing (everest-request): a certificate whose version field says 10 raised
    x509.InvalidVersion (not a ValueError) out of the certificate check."""
    import base64

    from cryptography.hazmat.primitives import serialization

    pki = Pki()
    store.install(pem(pki.root))
    der = bytearray(pki.signer.public_bytes(serialization.Encoding.DER))
    at = der.index(b"\xa0\x03\x02\x01\x02")  # [0] EXPLICIT INTEGER 2 (v3)
    der[at + 4] = 10
    text = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    forged = "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n" % "\n".join(lines)
    with pytest.raises(CertificateProblem, match="not PEM X.509") as e:
        store.check(forged)
    assert e.value.status == INVALID
