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
            [PayloadSource("rootfs", "rootfs", image, "gzip")] + list(extra),
            keys or [self.release_key],
            version=version,
            security_version=security_version,
            compatible=[{"model": self.model, "hardware_revisions": [self.hardware_revision]}],
            expires=int(time.time()) + 30 * DAY,
        )
        return out
