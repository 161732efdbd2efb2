"""The board's trust store: the provisioned root (and a rotated one, if newer) verified with the
board's own Ed25519/P-256 code, and manifest verification with the device policy.

Invariant: the same rules as the Linux agent (agent/core keyring and policy: root threshold and
expiry, release threshold, bundle expiry, model, hardware revision, anti-rollback floor); only
the signature arithmetic is this package's. Nothing is parsed or imported until verify() runs,
and the root is read and checked again each time, in phases (agent/mpy/phase.py): the root's
verifier, then the release's, then the manifest parser, each leaving the heap before the next
arrives.
"""

from agent.core.errors import ConfigError
from agent.mpy.phase import Phase


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


class Trust:
    def __init__(self, root_path, rotated_path=None):
        _size(root_path)  # a missing root is a set-up error at boot, not at the first job
        self.root_path = root_path
        self.rotated_path = rotated_path

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

    def _signed_manifest(self, envelope, now):
        """The manifest bytes a threshold of the newest root's release keys signed."""
        from agent.core import keyring
        from agent.mpy.verify import verify_key

        with Phase("root"):  # the root's verifier leaves before the release's arrives
            root = self.root()
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
