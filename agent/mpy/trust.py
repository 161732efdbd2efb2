"""The board's trust store: the provisioned root (and a rotated one, if newer) verified with the
board's own Ed25519/P-256 code, and manifest verification with the device policy.

Invariant: the same rules as the Linux agent (agent/core keyring and policy: root threshold and
expiry, release threshold, bundle expiry, model, hardware revision, anti-rollback floor); only
the signature arithmetic is this package's.
"""

from agent.core import keyring, policy
from agent.core.envelope import MAX_ENVELOPE, ROOT_TYPE, parse_envelope
from agent.core.errors import ConfigError
from agent.core.manifest import parse_manifest
from agent.mpy.verify import verify_key


def _read(path):
    import os

    try:
        size = os.stat(path)[6]
        if size > MAX_ENVELOPE:  # checked before reading: a heap of 96K has no room to spare
            raise ConfigError("trusted root %s is larger than %d bytes" % (path, MAX_ENVELOPE))
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError("cannot read trusted root %s: %s" % (path, e))


class Trust:
    def __init__(self, root_path, rotated_path=None):
        self.root = keyring.load_trusted(parse_envelope(_read(root_path), ROOT_TYPE), verify_key)
        if rotated_path:
            try:
                raw = _read(rotated_path)
            except ConfigError:
                raw = None
            if raw:
                rotated = keyring.load_trusted(parse_envelope(raw, ROOT_TYPE), verify_key)
                if rotated.version > self.root.version:
                    self.root = rotated

    def verify(self, envelope, device, floor, now):
        """The manifest of `envelope` if every rule holds; a Rejected subclass otherwise."""
        keyring.check_root_expiry(self.root, now)
        manifest = parse_manifest(keyring.verify_release(self.root, envelope, verify_key))
        policy.check_manifest(manifest, device, now, floor)
        return manifest
