"""The `cryptography` adapter: keys, signatures and X.509 chains; CPython only.

Invariant: verify functions answer True/False (or raise a Rejected subclass for X.509) and never
let a library exception escape, so the pure core can treat "could not verify" as "not verified".
Key ids are sha256 hex of the DER SubjectPublicKeyInfo, the same on every key type.
"""

import datetime
import hashlib
import os

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.core import keyring
from agent.core.errors import BadSignature, ConfigError, Expired, MalformedBundle, UnknownKey

# cryptography.hazmat.primitives.serialization (it imports the SSH key code) and
# cryptography.x509 are imported by the functions that need them, not here: verifying a
# bundle needs neither, and they are most of the package's import time (docs/transfer.md).
# So are the ECDSA, RSA and hash modules (3 ms): an Ed25519 release never needs them.

KEYTYPES = keyring.KEYTYPES  # ("ed25519", "ecdsa-p256")
CHUNK = 1 << 20


# --- keys --------------------------------------------------------------------------------------


def generate(keytype):
    if keytype == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if keytype == "ecdsa-p256":
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.generate_private_key(ec.SECP256R1())
    raise ConfigError("unknown key type %r" % keytype, hint="use one of %s" % ", ".join(KEYTYPES))


def keytype_of(key):
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return "ecdsa-p256"
    raise ConfigError("unsupported key %s" % type(key).__name__, hint="use ed25519 or ecdsa-p256")


def public_of(key):
    return key.public_key() if hasattr(key, "public_key") else key


def public_der(key):
    from cryptography.hazmat.primitives import serialization

    return public_of(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def keyid(key):
    return keyring.keyid_of(public_der(key))


def private_pem(key):
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key):
    from cryptography.hazmat.primitives import serialization

    return public_of(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def save_keypair(key, name):
    """Write NAME.key (0600, created with that mode) and NAME.pub; returns the key id."""
    fd = os.open(name + ".key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    with open(name + ".pub", "wb") as f:
        f.write(public_pem(key))
    return keyid(key)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("cannot read key %s: %s" % (path, e.strerror)) from None


def load_private(path):
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("%s is not an unencrypted PEM private key: %s" % (path, e)) from None
    keytype_of(key)
    return key


def load_public(path):
    """A public key from a .pub PEM, or the public half of a .key PEM."""
    from cryptography.hazmat.primitives import serialization

    data = _read(path)
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError("%s is not a PEM key: %s" % (path, e)) from None
    keytype_of(key)
    return key


# --- sign / verify -----------------------------------------------------------------------------


def sign(key, data):
    """Ed25519 over data, or ECDSA P-256 with SHA-256 (DER-encoded r, s)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(pubkey, sig, data):
    try:
        if isinstance(pubkey, ed25519.Ed25519PublicKey):
            pubkey.verify(sig, data)
        else:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec

            if not isinstance(pubkey, ec.EllipticCurvePublicKey):
                return False
            pubkey.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_key(key, sig, data):
    """The verify_fn injected into agent.core.keyring: key is a keyring.Key."""
    pubkey = public_from_spki(key.keytype, key.public_der)
    return pubkey is not None and verify(pubkey, sig, data)


def public_from_spki(keytype, der):
    """The public key of a root's entry, or None unless `der` is the one canonical SPKI of a
    `keytype` key (keyring.CANONICAL_SPKI): another encoding would be a second key id, and a
    root that says ed25519 must not accept an ECDSA key in disguise."""
    if keytype not in keyring.CANONICAL_SPKI or not keyring.is_canonical(keytype, der):
        return None
    raw = der[len(keyring.CANONICAL_SPKI[keytype][0]) :]
    try:
        if keytype == "ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except (ValueError, TypeError):  # not a point on the curve
        return None


# --- X.509, OCPP style -------------------------------------------------------------------------


# cryptography.x509 is imported by the functions below, not at the top: it is half of the
# package's import time and only OCPP-style detached signatures need it (docs/transfer.md).


def load_certs_pem(data, what="certificate"):
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    # InvalidVersion is no ValueError: a version field of 10 raised out of the OCPP check.
    except (ValueError, x509.InvalidVersion) as e:
        raise MalformedBundle("%s is not PEM X.509: %s" % (what, e)) from None
    if not certs:
        raise MalformedBundle("%s holds no certificate" % what)
    for cert in certs:
        _parse_fields(cert, what)
    return certs


def _parse_fields(cert, what):
    """cryptography parses a certificate's DER lazily: a PEM from the network can load and
    then raise from `.subject` in the middle of an error message. Every field the checks read
    is parsed here, so a malformed one is MalformedBundle at load time."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    # What cryptography raises when a lazily parsed field is malformed.
    field_errors = (ValueError, TypeError, x509.DuplicateExtension,
                    x509.UnsupportedGeneralNameType, UnsupportedAlgorithm)  # fmt: skip
    try:
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        list(cert.extensions)
        cert.public_key()
        cert.fingerprint(hashes.SHA256())
    except field_errors as e:
        raise MalformedBundle("%s is malformed X.509: %s" % (what, e)) from None


def utcnow(now):
    """An aware UTC datetime for epoch seconds `now` (None: the clock)."""
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(int(now), datetime.timezone.utc)


def _check_leaf_use(leaf):
    # The chain check permits any leaf extensions (a code-signing cert is no TLS client cert),
    # so the signing-specific rules are checked here: digitalSignature and codeSigning.
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise BadSignature("signing certificate's key usage forbids digital signatures")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
            raise BadSignature("signing certificate is not for code signing (extended key usage)")
    except x509.ExtensionNotFound:
        pass


def verify_cert_chain(leaf, roots, intermediates=(), now=None):
    """Raise unless `leaf` chains to one of `roots` at time `now` (epoch s; default: clock).

    Uses cryptography's RFC 5280 path builder (x509.verification) with the web-PKI CA rules
    for the issuers and any extensions on the leaf, then checks the leaf's signing use.
    """
    from cryptography.x509.verification import (
        ExtensionPolicy,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    when = utcnow(now)
    if leaf.not_valid_after_utc < when or leaf.not_valid_before_utc > when:
        raise Expired(
            "signing certificate is valid %s .. %s, not at %s"
            % (leaf.not_valid_before_utc, leaf.not_valid_after_utc, when.replace(microsecond=0)),
            hint="the firmware must be re-signed with a current certificate",
        )
    builder = PolicyBuilder().store(Store(list(roots))).time(when).max_chain_depth(4)
    builder = builder.extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
    )
    try:
        builder.build_client_verifier().verify(leaf, list(intermediates))
    except VerificationError as e:
        raise UnknownKey(
            "signing certificate %s does not chain to the manufacturer root: %s"
            % (leaf.subject.rfc4514_string(), e),
            hint="configure the right manufacturer root, or get firmware signed by it",
        ) from None
    _check_leaf_use(leaf)


def file_digest(path, chunk_size=CHUNK):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.digest()


def verify_digest_signature(pubkey, sig, digest, rsa_pkcs1v15=False):
    """A signature over a file, given the file's SHA-256 digest (so the file streams).

    ECDSA signs the prehashed SHA-256 as usual; RSA must use PSS (MGF1-SHA-256, any salt
    length), as OCPP L01.FR.04 asks, and PKCS#1 v1.5 only with `rsa_pkcs1v15` (what
    `openssl dgst -sha256 -sign` makes: an opt-in for manufacturers who sign that way).
    Ed25519 cannot be prehashed, so for Ed25519 the convention here is a signature over the
    32-byte digest.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

    try:
        if isinstance(pubkey, ec.EllipticCurvePublicKey):
            pubkey.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        elif isinstance(pubkey, rsa.RSAPublicKey):
            return _verify_rsa(pubkey, sig, digest, rsa_pkcs1v15)
        elif isinstance(pubkey, ed25519.Ed25519PublicKey):
            pubkey.verify(sig, digest)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _pss():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


def _verify_rsa(pubkey, sig, digest, pkcs1v15):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    paddings = [_pss()] + ([padding.PKCS1v15()] if pkcs1v15 else [])
    for pad in paddings:
        try:
            pubkey.verify(sig, digest, pad, utils.Prehashed(hashes.SHA256()))
            return True
        except (InvalidSignature, ValueError, TypeError):
            continue
    return False


def sign_digest(key, digest, rsa_padding="pss"):
    """The signing side of verify_digest_signature (used by tests and tooling); RSA signs
    with PSS (salt = digest length) or, with rsa_padding="pkcs1v15", PKCS#1 v1.5."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    if isinstance(key, rsa.RSAPrivateKey):
        if rsa_padding == "pkcs1v15":
            pad = padding.PKCS1v15()
        else:
            pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return key.sign(digest, pad, utils.Prehashed(hashes.SHA256()))
    return key.sign(digest)
