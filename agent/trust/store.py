"""The device's trust store: the trusted root on disk, root rotation, manifest verification.

Invariant: the root in use is the provisioned root (self-signed by its root role) or a later
version reached only through keyring.update_root, one version at a time; a rotated root is
persisted atomically before it is used. A manifest comes out of verify_envelope() only when
the current, unexpired root's release role reached its threshold over the exact bytes.
"""

import os
import time

from agent.core import keyring, policy
from agent.core.envelope import MAX_ENVELOPE, ROOT_TYPE, Envelope, parse_envelope
from agent.core.errors import ConfigError
from agent.core.manifest import parse_manifest
from agent.state.atomic import write_atomic
from agent.trust import crypto

STATE_NAME = "trusted-root.json"  # never the provisioned file, even if both share a dir


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(MAX_ENVELOPE + 1)  # parse_envelope refuses anything that long
    except OSError as e:
        raise ConfigError(
            "cannot read trusted root %s: %s" % (path, e.strerror),
            hint='set [trust] root = "/path/root.json" in the agent config',
        ) from None


def load_root_file(path, verify_fn=crypto.verify_key):
    """A root envelope file -> keyring.Root, verified under its own root role."""
    return keyring.load_trusted(parse_envelope(_read(path), ROOT_TYPE), verify_fn)


class Trust:
    """root_path: the provisioned root; state_path: where rotated roots are kept (optional)."""

    def __init__(self, root_path, state_path=None, clock=time.time, verify_fn=crypto.verify_key):
        self.clock = clock
        self.verify_fn = verify_fn
        self.state_path = state_path
        self.root = load_root_file(root_path, verify_fn)
        if state_path and os.path.exists(state_path):
            rotated = load_root_file(state_path, verify_fn)
            if rotated.version > self.root.version:
                self.root = rotated

    @classmethod
    def from_config(cls, config, clock=time.time):
        """[trust] root: the provisioned root; rotated roots go to STATE_DIR/trusted-root.json."""
        root = config.trust.get("root")
        if not root:
            raise ConfigError(
                "%s: [trust] root is not set" % config.path,
                hint='add [trust] root = "root.json" (the release root this device trusts)',
            )
        state = os.path.join(config.state_dir, STATE_NAME)
        return cls(config.resolve(root), state, clock=clock)

    def _now(self, now):
        return int(self.clock() if now is None else now)

    def verify_envelope(self, envelope, now=None):
        """Envelope (or its bytes) -> Manifest, if the release threshold verified."""
        if not isinstance(envelope, Envelope):
            envelope = parse_envelope(envelope)
        keyring.check_root_expiry(self.root, self._now(now))
        return parse_manifest(keyring.verify_release(self.root, envelope, self.verify_fn))

    def verify(self, envelope, device=None, installed_security_version=None, now=None):
        """verify_envelope plus policy: expiry always, model/hardware if device, anti-rollback
        if installed_security_version is not None."""
        now = self._now(now)
        manifest = self.verify_envelope(envelope, now)
        policy.check_expiry(manifest, now)
        if device is not None:
            policy.check_device(manifest, device)
        policy.check_security_version(manifest, installed_security_version)
        return manifest

    def update_root(self, envelopes, now=None):
        """Apply root envelopes (bytes) N+1, N+2, ... in order; persist; return the new Root."""
        root = self.root
        for raw in envelopes:
            root = keyring.update_root(root, parse_envelope(raw, ROOT_TYPE), self.verify_fn)
            if self.state_path:
                write_atomic(self.state_path, raw)
            self.root = root
        keyring.check_root_expiry(root, self._now(now))
        return root
