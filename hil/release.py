"""A release engineer's kit for rigs and the demo: keys, a trusted root, signed releases.

Invariant: everything a rig installs went through the same signing path as a real release
(agent.bundle.writer with keys from agent.trust.crypto); the virtual board trusts only the root
written here. A real bench uses the OEM's own bundles instead (see docs/hil.md).
"""

import json
import os
import time

from agent.bundle.writer import PayloadSource, create_bundle, sign_envelope
from agent.commands.root import root_fields
from agent.core.envelope import ROOT_TYPE
from agent.trust import crypto

DAY = 86400


class ReleaseKit:
    """release_key: sign with this key (a bench whose board already trusts its root);
    without it a fresh root and release key are made and the root is written to DIR."""

    # The firmware image's payload: (name, slot class). A board whose slots hold an `app`
    # (the MicroPython board) names it in a subclass.
    PAYLOAD = ("rootfs", "rootfs")

    def __init__(self, workdir, model, hardware_revision, release_key=None):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.model = model
        self.hardware_revision = hardware_revision
        self.root_path = None
        if release_key is not None:
            self.release_key = release_key
            return
        self.root_key = crypto.generate("ed25519")
        self.release_key = crypto.generate("ecdsa-p256")
        self.root_path = os.path.join(workdir, "root.json")
        fields = root_fields(
            [self.root_key], [self.release_key], 1, 1, 1, int(time.time()) + 365 * DAY
        )
        raw = json.dumps(fields, indent=1, sort_keys=True).encode() + b"\n"
        with open(self.root_path, "wb") as f:
            f.write(sign_envelope(ROOT_TYPE, raw, [self.root_key]).encode())

    def bundle_image(self, image, version, security_version=1, keys=None, name=None, extra=()):
        """Sign any board's firmware image file into DIR/NAME (plus `extra` PayloadSources,
        e.g. MCU images); returns the path."""
        out = os.path.join(self.dir, name or "charger-%s.cub" % version)
        create_bundle(
            out,
            [self.image_payload(image)] + list(extra),
            keys or [self.release_key],
            version=version,
            security_version=security_version,
            compatible=[{"model": self.model, "hardware_revisions": [self.hardware_revision]}],
            expires=int(time.time()) + 30 * DAY,
        )
        return out

    def image_payload(self, image):
        """The firmware image as the bundle's payload (a board kit may compress it otherwise)."""
        return PayloadSource(self.PAYLOAD[0], self.PAYLOAD[1], image, "gzip")


class ManufacturerPki:
    """An OEM's firmware-signing PKI for OCPP (what a CSMS sends as signingCertificate and
    signature): a root (the board's ManufacturerRootCertificate, written to DIR/mfr-root.pem)
    and a signer certificate it issued directly, for code signing."""

    def __init__(self, workdir):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self._x509, self._serialization = x509, serialization
        self.root_key = crypto.generate("ecdsa-p256")
        self.root = self._cert(self.root_key, "Manufacturer Root CA", None, ca=True)
        self.signer_key = crypto.generate("ecdsa-p256")
        self.signer = self._cert(self.signer_key, "Firmware Signer", self.root)
        self.root_path = os.path.join(workdir, "mfr-root.pem")
        with open(self.root_path, "wb") as f:
            f.write(self.pem(self.root).encode())

    def _cert(self, key, name, issuer, ca=False, days=(-30, 365)):
        import datetime

        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        x509 = self._x509
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_key = self.root_key if issuer is not None else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer is not None else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days[0]))
            .not_valid_after(now + datetime.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                    crl_sign=ca, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        )  # fmt: skip
        if not ca:
            eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
            builder = builder.add_extension(eku, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem(self, cert):
        return cert.public_bytes(self._serialization.Encoding.PEM).decode()

    @property
    def signing_certificate(self):
        return self.pem(self.signer)

    def expired_signing_certificate(self):
        """A signer certificate from the right root that expired yesterday (TC_L_05)."""
        return self.pem(self._cert(self.signer_key, "Expired Signer", self.root, days=(-60, -1)))

    def sign(self, path):
        """The base64 signature over the whole file (ECDSA P-256, SHA-256)."""
        from agent.bundle.ocpp import sign_firmware

        return sign_firmware(path, self.signer_key)
