"""Reusable builders for signed bundles and roots; installer, daemon and HIL tests import these.

    from tests.bundle.factory import make_bundle
    bundle_path, root_path = make_bundle(tmp_path, payloads={"rootfs": b"..."}, version="1.1.0")

Keys are generated once per process (cached), so building many bundles stays fast.
"""

import json
import os
import time

from agent.bundle.writer import PayloadSource, create_bundle, sign_envelope
from agent.commands.root import root_fields
from agent.core import timefmt
from agent.core.envelope import ROOT_TYPE
from agent.trust import crypto

MODEL = "ACME-AC22"
HW = "rev-b"
DAY = 86400
_CACHE = {}


def make_keys(count=1, keytype="ed25519", tag="default"):
    """`count` private keys of `keytype`; the same (tag, keytype, i) gives the same key object."""
    keys = []
    for i in range(count):
        ident = (tag, keytype, i)
        if ident not in _CACHE:
            _CACHE[ident] = crypto.generate(keytype)
        keys.append(_CACHE[ident])
    return keys


def default_keys():
    """(root key, release key) used when a helper is given no keys."""
    return make_keys(1, tag="root")[0], make_keys(1, tag="release")[0]


def root_envelope(
    root_keys,
    release_keys,
    root_threshold=1,
    release_threshold=1,
    version=1,
    expires=None,
    signers=None,
    created=None,
):
    """Root envelope bytes; signed by `signers` (default: root_keys). created: epoch s or
    None (the root then carries no `created`, no floor of time)."""
    expires = int(time.time()) + 365 * DAY if expires is None else int(expires)
    fields = root_fields(
        root_keys, release_keys, root_threshold, release_threshold, version, expires
    )
    if created is not None:
        fields["created"] = timefmt.format(created)
    raw = json.dumps(fields, indent=1, sort_keys=True).encode() + b"\n"
    signers = root_keys if signers is None else signers
    return sign_envelope(ROOT_TYPE, raw, signers).encode()


def make_root(path, root_keys=None, release_keys=None, **kwargs):
    """Write a root file; path may be a directory (then DIR/root.json). Returns the path.

    kwargs: root_threshold, release_threshold, version, expires/created (epoch s), signers.
    """
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "root.json")
    root_key, release_key = default_keys()
    root_keys = [root_key] if root_keys is None else root_keys
    release_keys = [release_key] if release_keys is None else release_keys
    with open(path, "wb") as f:
        f.write(root_envelope(root_keys, release_keys, **kwargs))
    return path


def _payload_file(tmp_path, name, data):
    if isinstance(data, (bytes, bytearray)):
        path = os.path.join(str(tmp_path), "payload-%s.bin" % name)
        with open(path, "wb") as f:
            f.write(data)
        return path
    return str(data)


def make_bundle(
    tmp_path,
    payloads=None,
    version="1.0.0",
    security_version=1,
    model=MODEL,
    hw=HW,
    expires=None,
    keys=None,
    compress=False,
    root_path=None,
    created=None,
    name="bundle.cub",
):
    """Build a signed bundle in tmp_path; returns (bundle_path, root_path).

    payloads: {name: bytes | path | (slot_class, bytes | path)}; slot class defaults to the
    name. Default: {"rootfs": 64 KiB of pseudo-random bytes}. model/hw: str or list.
    keys: release private keys (default: the default release key). expires/created: epoch s.
    compress: True gzips every payload. root_path: None writes tmp_path/root.json trusting
    the default root key and `keys` as the release role (threshold 1).
    """
    tmp_path = str(tmp_path)
    now = int(time.time())
    if payloads is None:
        payloads = {"rootfs": os.urandom(64 * 1024)}
    keys = [default_keys()[1]] if keys is None else keys
    sources = []
    for pname in sorted(payloads):
        spec = payloads[pname]
        slot_class, data = spec if isinstance(spec, tuple) else (pname, spec)
        path = _payload_file(tmp_path, pname, data)
        sources.append(PayloadSource(pname, slot_class, path, "gzip" if compress else "none"))
    models = [model] if isinstance(model, str) else list(model)
    hws = [hw] if isinstance(hw, str) else list(hw)
    out = os.path.join(tmp_path, name)
    create_bundle(
        out,
        sources,
        keys,
        version=version,
        security_version=security_version,
        compatible=[{"model": m, "hardware_revisions": hws} for m in models],
        expires=now + 30 * DAY if expires is None else expires,
        created=now - 60 if created is None else created,
    )
    if root_path is None:
        root_path = make_root(os.path.join(tmp_path, "root.json"), release_keys=keys)
    return out, root_path


def device(model=MODEL, hw=HW):
    return {"model": model, "hardware_revision": hw}
