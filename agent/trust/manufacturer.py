"""The firmware-signing roots (OCPP ManufacturerRootCertificate) and the check of a signing
certificate against them.

Invariant: a signing certificate is accepted only when it is one PEM certificate issued
directly by an installed root (no intermediates, as OCPP L01 requires), valid at the given
time, fit for code signing, and not on a revocation list its root signed. Roots come from
files the OEM provisioned (read-only) and from what a CSMS installed with InstallCertificate
(kept in the state dir, one PEM per root, named by fingerprint); DeleteCertificate removes
only the latter. Nothing from `cryptography` escapes: problems are CertificateProblem.
"""

import binascii
import hashlib
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent.core.errors import Rejected, UpdateError
from agent.state.atomic import write_atomic
from agent.trust import crypto

INVALID = "InvalidCertificate"
REVOKED = "RevokedCertificate"
MAX_PEM = 64 * 1024


class CertificateProblem(Rejected):
    """The signing certificate cannot be trusted; `status` is INVALID or REVOKED."""

    reason = "invalid-certificate"
    exit_code = 30

    def __init__(self, message, status=INVALID):
        Rejected.__init__(self, message)
        self.status = status
        if status == REVOKED:
            self.reason = "revoked-certificate"


def _load_pem_file(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_PEM)
    except OSError:
        return b""


def _issuer_key_bits(cert):
    """The issuer's subjectPublicKey BIT STRING contents (for a root: its own key)."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return crypto.public_der(key)


def hash_data(cert):
    """OCPP CertificateHashDataType of a root (issuer = the root itself), SHA256."""
    return {
        "hash_algorithm": "SHA256",
        "issuer_name_hash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuer_key_hash": hashlib.sha256(_issuer_key_bits(cert)).hexdigest(),
        "serial_number": "%x" % cert.serial_number,
    }


def _same_hash_data(a, b):
    keys = ("hash_algorithm", "issuer_name_hash", "issuer_key_hash", "serial_number")
    norm = [dict((k, str(d.get(k, "")).lower().lstrip("0") or "0") for k in keys) for d in (a, b)]
    return norm[0] == norm[1]


class ManufacturerRoots:
    """store_dir: where InstallCertificate keeps roots (created on demand); provisioned: PEM
    files of roots the OEM shipped; crls: PEM or DER revocation lists (also *.crl files in
    store_dir). rsa_pkcs1v15: accept RSA PKCS#1 v1.5 firmware signatures (opt-in)."""

    def __init__(self, store_dir, provisioned=(), crls=(), rsa_pkcs1v15=False):
        self.store_dir = store_dir
        self.provisioned = list(provisioned)
        self.crl_paths = list(crls)
        self.rsa_pkcs1v15 = bool(rsa_pkcs1v15)

    @classmethod
    def from_config(cls, cfg):
        """[ocpp_firmware] manufacturer_roots (PEM files, default [trust] manufacturer_root),
        manufacturer_crls, rsa_pkcs1v15; installed roots live in STATE/manufacturer-roots."""
        section = cfg.section("ocpp_firmware")
        files = section.get("manufacturer_roots")
        if files is None:
            files = [cfg.trust["manufacturer_root"]] if cfg.trust.get("manufacturer_root") else []
        if isinstance(files, str):
            files = [files]
        crls = section.get("manufacturer_crls", [])
        if isinstance(crls, str):
            crls = [crls]
        return cls(
            os.path.join(cfg.state_dir, "manufacturer-roots"),
            [cfg.resolve(p) for p in files],
            [cfg.resolve(p) for p in crls],
            section.get("rsa_pkcs1v15", False),
        )

    # -- the roots ------------------------------------------------------------------------------

    def _installed_files(self):
        if self.store_dir is None:  # the roots given, nothing a CSMS installed (the CLI)
            return []
        try:
            names = sorted(os.listdir(self.store_dir))
        except OSError:
            return []
        return [os.path.join(self.store_dir, n) for n in names if n.endswith(".pem")]

    def entries(self):
        """[(certificate, path, installed_by_csms)] for every root that loads."""
        out = []
        for paths, installed in ((self.provisioned, False), (self._installed_files(), True)):
            for path in paths:
                try:
                    certs = crypto.load_certs_pem(_load_pem_file(path), path)
                except UpdateError:
                    continue  # an unreadable file is no root; the others still count
                out.extend((cert, path, installed) for cert in certs)
        return out

    def roots(self):
        return [cert for cert, _, _ in self.entries()]

    def ids(self):
        """CertificateHashData of every root, for GetInstalledCertificateIds."""
        return [hash_data(cert) for cert in self.roots()]

    def install(self, pem, now=None):
        """InstallCertificate(ManufacturerRootCertificate): Accepted, Rejected (not a
        currently valid self-signed CA certificate) or Failed (could not be stored)."""
        if isinstance(pem, str):
            pem = pem.encode("ascii", "replace")
        try:
            certs = crypto.load_certs_pem(pem[:MAX_PEM], "certificate")
        except UpdateError:
            return "Rejected"
        if len(certs) != 1 or not _is_valid_root(certs[0], now):
            return "Rejected"
        cert = certs[0]
        name = "%s.pem" % binascii.hexlify(cert.fingerprint(hashes.SHA256())).decode()
        try:
            os.makedirs(self.store_dir, exist_ok=True)
            write_atomic(os.path.join(self.store_dir, name),
                         cert.public_bytes(serialization.Encoding.PEM))  # fmt: skip
        except OSError:
            return "Failed"
        return "Accepted"

    def delete(self, wanted):
        """DeleteCertificate: Accepted, NotFound, or Failed (a provisioned root, which only
        the OEM's image may change, or a file that cannot be removed)."""
        status = "NotFound"
        for cert, path, installed in self.entries():
            if not _same_hash_data(hash_data(cert), wanted or {}):
                continue
            if not installed:
                status = "Failed"
                continue
            try:
                os.unlink(path)
                return "Accepted"
            except OSError:
                status = "Failed"
        return status

    # -- the check ------------------------------------------------------------------------------

    def check(self, signing_cert_pem, now=None):
        """The leaf x509 certificate, or CertificateProblem (INVALID or REVOKED)."""
        if isinstance(signing_cert_pem, str):
            signing_cert_pem = signing_cert_pem.encode("ascii", "replace")
        try:
            certs = crypto.load_certs_pem(signing_cert_pem, "signing certificate")
        except UpdateError as e:
            raise CertificateProblem(e.message) from None
        if len(certs) != 1:
            raise CertificateProblem(
                "signing certificate comes with %d more certificates; OCPP allows no "
                "intermediates" % (len(certs) - 1)
            )
        roots = self.roots()
        if not roots:
            raise CertificateProblem("no ManufacturerRootCertificate is installed")
        leaf = certs[0]
        try:
            crypto.verify_cert_chain(leaf, roots, (), now=now)
        except UpdateError as e:
            raise CertificateProblem(e.message) from None
        self._check_revocation(leaf, roots)
        return leaf

    def verify(self, digest, signature, signing_cert_pem, now=None):
        """Check the certificate, then the signature over the file's SHA-256 `digest`:
        CertificateProblem, BadSignature or MalformedBundle (signature not base64)."""
        from agent.bundle import ocpp

        leaf = self.check(signing_cert_pem, now)
        ocpp.verify_digest(digest, signature, leaf, self.rsa_pkcs1v15)
        return leaf

    def _crls(self):
        paths = list(self.crl_paths)
        try:
            if self.store_dir is not None:  # listdir(None) would list the working dir
                names = sorted(os.listdir(self.store_dir))
                paths += [os.path.join(self.store_dir, n) for n in names if n.endswith(".crl")]
        except OSError:
            pass
        for path in paths:
            data = _load_pem_file(path)
            for load in (x509.load_pem_x509_crl, x509.load_der_x509_crl):
                try:
                    yield load(data)
                    break
                except ValueError:
                    continue

    def _check_revocation(self, leaf, roots):
        for crl in self._crls():
            if crl.issuer != leaf.issuer:
                continue
            issuers = [r for r in roots if r.subject == crl.issuer]
            if not any(crl.is_signature_valid(r.public_key()) for r in issuers):
                continue  # a list its root did not sign proves nothing
            if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
                raise CertificateProblem(
                    "signing certificate %s (serial %x) is revoked"
                    % (leaf.subject.rfc4514_string(), leaf.serial_number),
                    REVOKED,
                )


def _is_valid_root(cert, now):
    when = crypto.utcnow(now)
    if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
        return False
    if cert.issuer != cert.subject:
        return False
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        cert.verify_directly_issued_by(cert)  # the self-signature holds
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
