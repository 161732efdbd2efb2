"""A small X.509 PKI for OCPP-style tests: manufacturer root, optional intermediate, signer."""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def new_key(kind="ecdsa"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _usage(ca):
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _hash_for(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_cert(
    subject_key,
    name,
    issuer_key=None,
    issuer_cert=None,
    ca=False,
    not_before=None,
    not_after=None,
    eku=ExtendedKeyUsageOID.CODE_SIGNING,
):
    """A certificate for subject_key; self-signed when issuer_key is None."""
    now = datetime.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key = issuer_key or subject_key
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=60))
        .not_valid_after(not_after or now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_usage(ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if not ca and eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class Pki:
    """Manufacturer root -> (intermediate) -> firmware signer."""

    def __init__(self, signer_kind="ecdsa", intermediate=False, **signer_kwargs):
        self.root_key = new_key("ecdsa")
        self.root = make_cert(self.root_key, "Manufacturer Root CA", ca=True)
        issuer_key, issuer_cert, self.chain = self.root_key, self.root, []
        if intermediate:
            self.int_key = new_key("ecdsa")
            self.intermediate = make_cert(
                self.int_key, "Firmware CA", self.root_key, self.root, ca=True
            )
            issuer_key, issuer_cert, self.chain = (
                self.int_key,
                self.intermediate,
                [self.intermediate],
            )
        self.signer_key = new_key(signer_kind)
        self.signer = make_cert(
            self.signer_key, "Firmware Signer", issuer_key, issuer_cert, **signer_kwargs
        )

    @property
    def signing_cert_pem(self):
        return pem(self.signer, *self.chain)
