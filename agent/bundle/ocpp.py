"""OCPP-style firmware: a plain firmware file, a base64 detached signature, a PEM signing cert.

This is what OCPP 1.6 security `SignedUpdateFirmware` and OCPP 2.0.1 `UpdateFirmware` carry
(`signature`, `signingCertificate`). Invariant: the firmware is accepted only if the signing
certificate (plus any intermediates appended to the PEM) chains to a configured manufacturer
root at the given time, and its key's signature over the SHA-256 of the file verifies (ECDSA,
RSA-PSS; RSA PKCS#1 v1.5 only as an opt-in); the file is hashed in chunks, never loaded whole.
"""

import binascii

from agent.core.errors import BadSignature, ConfigError, MalformedBundle
from agent.trust import crypto


def load_roots(path):
    """Manufacturer root certificate(s) from a PEM file."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise ConfigError("cannot read manufacturer root %s: %s" % (path, e.strerror)) from None
    return crypto.load_certs_pem(data, "manufacturer root %s" % path)


def decode_signature(signature):
    if isinstance(signature, str):
        signature = signature.encode("ascii", "replace")
    try:
        sig = binascii.a2b_base64(signature.strip())
    except (binascii.Error, ValueError) as e:
        raise MalformedBundle("firmware signature is not base64: %s" % e) from None
    if not sig or len(sig) > 1024:
        raise MalformedBundle("firmware signature is empty or longer than 1024 bytes")
    return sig


def verify_firmware(
    firmware_path, signature, signing_cert_pem, roots, now=None, rsa_pkcs1v15=False
):
    """Raise Expired / UnknownKey (cert) or BadSignature (file); return the file's sha256 hex.

    signature: base64 (str or bytes); signing_cert_pem: PEM bytes, leaf first; roots: list of
    x509.Certificate; now: epoch seconds (default: the clock); rsa_pkcs1v15: also accept RSA
    PKCS#1 v1.5 signatures (RSA-PSS always).
    """
    if isinstance(signing_cert_pem, str):
        signing_cert_pem = signing_cert_pem.encode("ascii", "replace")
    certs = crypto.load_certs_pem(signing_cert_pem, "signing certificate")
    leaf, intermediates = certs[0], certs[1:]
    crypto.verify_cert_chain(leaf, roots, intermediates, now=now)
    digest = crypto.file_digest(firmware_path)
    verify_digest(digest, signature, leaf, rsa_pkcs1v15)
    return binascii.hexlify(digest).decode("ascii")


def verify_digest(digest, signature, leaf, rsa_pkcs1v15=False):
    """BadSignature unless `signature` (base64) by `leaf`'s key covers the SHA-256 `digest`
    of the whole file; MalformedBundle for a signature that is not base64."""
    sig = decode_signature(signature)
    if not crypto.verify_digest_signature(leaf.public_key(), sig, digest, rsa_pkcs1v15):
        raise BadSignature(
            "firmware signature does not verify with certificate %s"
            % leaf.subject.rfc4514_string(),
            hint="the firmware file was altered, or signed with another key or padding",
        )


def sign_firmware(firmware_path, key, rsa_padding="pss"):
    """The OEM side: base64 signature over the file's SHA-256 (for tests and tooling)."""
    sig = crypto.sign_digest(key, crypto.file_digest(firmware_path), rsa_padding)
    return binascii.b2a_base64(sig).strip().decode("ascii")
