"""The board's trust store: the provisioned root (and a rotated one, if newer) verified with the
board's own Ed25519/P-256 code, and manifest verification with the device policy.

Invariant: the same rules as the Linux agent (agent/core keyring and policy: root threshold and
expiry, release threshold, bundle expiry, model, hardware revision, anti-rollback floor); only
the signature arithmetic is this package's. The work runs in phases (agent/mpy/phase.py): the
root's verifier, then the release's, then the manifest parser, each leaving the heap before the
next arrives.

Verifying the root costs the most heap (its envelope, its keys, Ed25519 with SHA-512), so its
verdict is kept: only the release role, version and expiry as plain values, bound to the SHA-256
of the root files' bytes. Every verify() hashes the files again; any change to either file, or
no verdict yet, verifies the root again in full. prepare() takes that step at boot, before the
agent's code and connection fill the heap. The verdict on a release's header is kept too, on
flash beside the rotated root (agent/mpy/signed.py, bound to fingerprint()), for the
install step's check of the same header.
"""

from agent.core.errors import ConfigError
from agent.mpy.phase import Phase

PIECE = 256  # the root files are hashed in pieces of this size, never read whole for it


def _size(path):
    import os

    try:
        return os.stat(path)[6]
    except OSError as e:
        raise ConfigError("cannot read trusted root %s: %s" % (path, e))


def _read(path):
    from agent.core.envelope import MAX_ENVELOPE

    if _size(path) > MAX_ENVELOPE:  # checked before reading: a small heap has no room to spare
        raise ConfigError("trusted root %s is larger than %d bytes" % (path, MAX_ENVELOPE))
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("cannot read trusted root %s: %s" % (path, e))


def _fingerprint(paths):
    """SHA-256 over the bytes of the files `paths` (a missing one counts as absent)."""
    import hashlib

    digest = hashlib.sha256()
    buf = bytearray(PIECE)
    for path in paths:
        digest.update(path.encode() + b"\0")
        try:
            with open(path, "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    digest.update(memoryview(buf)[:n])
        except OSError:
            digest.update(b"absent")
    return digest.digest()


def _verdict(root, fingerprint):
    """What a verified root decides later, as plain values (no keyring objects)."""
    role = root.role("release")
    keys = tuple((k, role.keys[k].keytype, role.keys[k].public_der) for k in role.keyids)
    return (fingerprint, root.version, root.expires, role.threshold, keys)


class Trust:
    def __init__(self, root_path, rotated_path=None):
        _size(root_path)  # a missing root is a set-up error at boot, not at the first job
        self.root_path = root_path
        self.rotated_path = rotated_path  # beside it, the verdict of agent/mpy/signed.py
        # (fingerprint, version, expires, release threshold, ((keyid, keytype, der), ...)) of
        # the root verified last: plain values, so no module of the root's phase stays behind.
        self.verified = None

    def _paths(self):
        return (self.root_path, self.rotated_path) if self.rotated_path else (self.root_path,)

    def _load(self, path):
        from agent.core import keyring
        from agent.core.envelope import ROOT_TYPE, parse_envelope
        from agent.mpy.verify import verify_key

        return keyring.load_trusted(parse_envelope(_read(path), ROOT_TYPE), verify_key)

    def root(self):
        """The newest trusted root: the provisioned one, or a rotated one of a higher version."""
        root = self._load(self.root_path)
        if self.rotated_path:
            try:
                rotated = self._load(self.rotated_path)
            except ConfigError:
                rotated = None
            if rotated is not None and rotated.version > root.version:
                root = rotated
        return root

    def fingerprint(self):
        """The SHA-256 of the root files' bytes now (what a verdict on them is bound to)."""
        return _fingerprint(self._paths())

    def _verify_root(self, fingerprint):
        """Verify the root files in full (root() in its own phase): the plain verdict, kept
        only if the files still hash to `fingerprint` (they did not change while read)."""
        self.verified = None
        with Phase("root"):
            verdict = _verdict(self.root(), fingerprint)
        if self.fingerprint() == fingerprint:
            self.verified = verdict
        return verdict

    def prepare(self):
        """Verify the root now, at boot, while the heap is emptiest. A failure is only printed:
        verify() verifies the root again and reports what is wrong with it."""
        fingerprint = self.fingerprint()
        if self.verified is not None and self.verified[0] == fingerprint:
            return
        try:
            self._verify_root(fingerprint)
        except Exception as e:  # MemoryError included: the first verify() tries again
            print("trusted root not verified at boot (%r); verified at the first job" % e)

    def trusted_root(self, keyring):
        """The root as keyring objects and its files' fingerprint: the kept verdict when the
        files are unchanged, otherwise verified again in full first."""
        fingerprint = self.fingerprint()
        verdict = self.verified
        if verdict is None or verdict[0] != fingerprint:
            verdict = self._verify_root(fingerprint)
        _, version, expires, threshold, rows = verdict
        keys = dict((k, keyring.Key(k, keytype, der)) for k, keytype, der in rows)
        release = keyring.Role("release", [row[0] for row in rows], threshold, keys)
        return keyring.Root(b"", version, expires, keys, {"release": release}), verdict[0]

    def _signed_manifest(self, envelope, now):
        """The manifest bytes a threshold of the newest root's release keys signed."""
        from agent.core import keyring
        from agent.mpy.verify import verify_key

        root, _ = self.trusted_root(keyring)
        keyring.check_root_expiry(root, now)
        return keyring.verify_release(root, envelope, verify_key)

    def verify(self, envelope, device, floor, now):
        """The manifest of `envelope` if every rule holds; a Rejected subclass otherwise."""
        with Phase("signatures"):  # keyring and verifiers leave before the manifest parser
            signed = self._signed_manifest(envelope, now)
        from agent.core import policy
        from agent.core.manifest import parse_manifest

        manifest = parse_manifest(signed)
        policy.check_manifest(manifest, device, now, floor)
        return manifest
