"""Create a signed bundle from payload files, streaming: no payload is ever held in memory.

Invariant: the manifest's size and sha256 for each payload are computed from the very bytes
that are then copied into the bundle (gzip output goes to a temporary file first, because the
manifest must precede the payloads), the manifest validates with the device's own parser before
it is signed, and the output appears under its name only when complete (temp file + rename).
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib

from agent.bundle import chunked
from agent.bundle import format as fmt
from agent.core import timefmt
from agent.core.envelope import MANIFEST_TYPE, Envelope
from agent.core.errors import ConfigError
from agent.core.manifest import CHUNKED, FORMAT, FORMAT_CHUNKED, WINDOW_BITS, parse_manifest
from agent.state.atomic import fsync_dir
from agent.trust import crypto

CHUNK = 1 << 20


class PayloadSource:
    """One payload to pack: a name, its slot class, the file, and 'none', 'gzip' or
    'zstd-chunks' (format 2: a chunk index for delta installs, agent/bundle/chunked.py); an
    MCU image has no slot class but `mcu` = {id, protocol, address, version}
    (docs/components.md).
    """

    def __init__(self, name, slot_class, path, compression="none", component=None, mcu=None,
                 window_bits=WINDOW_BITS, bases=()):  # fmt: skip
        self.name = name
        self.slot_class = slot_class
        self.path = path
        self.compression = compression
        self.component = component
        self.mcu = mcu
        # gzip: the deflate window (2**window_bits bytes) an installer needs to inflate it;
        # below 15 it is signed into the manifest (small boards, docs/micropython.md).
        self.window_bits = window_bits
        # zstd-chunks: images of earlier releases chargers run; what they lack is packed
        # once more as front frames, fetched in one range (docs/bundle-format.md).
        self.bases = list(bases)


def _hash_file(path, chunk_size=CHUNK):
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                h.update(block)
                size += len(block)
    except OSError as e:
        raise ConfigError("cannot read payload %s: %s" % (path, e.strerror)) from None
    return size, h.hexdigest()


def _gzip_to(src_path, dst_file, chunk_size=CHUNK, window_bits=WINDOW_BITS):
    """Compress src into the open dst_file; returns (stored size, stored sha256)."""
    # 16 + bits: gzip container with mtime 0, so the same input always gives the same bytes.
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + window_bits)
    h = hashlib.sha256()
    size = 0
    with open(src_path, "rb") as src:
        for block in iter(lambda: src.read(chunk_size), b""):
            out = z.compress(block)
            h.update(out)
            size += len(out)
            dst_file.write(out)
    out = z.flush()
    h.update(out)
    dst_file.write(out)
    dst_file.flush()
    return size + len(out), h.hexdigest()


def _stage_chunked(source, workdir):
    """(entry, path of the stored payload: group details, then units; stored top index) of
    a zstd-chunks payload."""
    tmp = tempfile.NamedTemporaryFile(dir=workdir, suffix=".units", delete=False)
    with tmp:
        index, size, sha, isize, isha = chunked.pack(source.path, tmp, bases=source.bases)
    entry = {"name": source.name, "slot_class": source.slot_class, "compression": CHUNKED}
    entry.update(size=size, sha256=sha, installed_size=isize, installed_sha256=isha)
    entry["index"] = {"size": len(index), "sha256": hashlib.sha256(index).hexdigest()}
    if source.component:
        entry["component"] = source.component
    return entry, tmp.name, index


def _stage(source, workdir):
    """(payload manifest entry, path of the bytes to copy into the bundle, chunk index)."""
    if source.compression == CHUNKED:
        return _stage_chunked(source, workdir)
    entry, path = _stage_plain(source, workdir)
    return entry, path, None


def _stage_plain(source, workdir):
    isize, isha = _hash_file(source.path)
    entry = {"name": source.name, "compression": "none"}
    if source.mcu is not None:
        entry.update(type="mcu", mcu=dict(source.mcu))
    else:
        entry["slot_class"] = source.slot_class
    if source.component:
        entry["component"] = source.component
    if source.compression == "none":
        entry.update(size=isize, sha256=isha, installed_size=isize, installed_sha256=isha)
        return entry, source.path
    if source.compression != "gzip":
        raise ConfigError("unknown compression %r for %s" % (source.compression, source.name))
    if not 9 <= source.window_bits <= WINDOW_BITS:
        raise ConfigError("window bits %r for %s: must be 9..15" % (source.window_bits,
                                                                   source.name))  # fmt: skip
    tmp = tempfile.NamedTemporaryFile(dir=workdir, suffix=".gz", delete=False)
    with tmp:
        size, sha = _gzip_to(source.path, tmp, window_bits=source.window_bits)
    entry.update(compression="gzip", size=size, sha256=sha, installed_size=isize)
    entry.update(installed_sha256=isha)
    if source.window_bits != WINDOW_BITS:
        entry["window_bits"] = source.window_bits
    return entry, tmp.name


def manifest_bytes(fields):
    """The manifest as written: sorted keys so identical input gives identical bytes."""
    return json.dumps(fields, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def sign_envelope(payload_type, payload, keys):
    envelope = Envelope(payload_type, payload, [])
    for key in keys:
        envelope = envelope.with_signature(
            crypto.keyid(key), crypto.sign(key, envelope.signed_bytes)
        )
    return envelope


def _copy(path, out, chunk_size=CHUNK):
    with open(path, "rb") as f:
        shutil.copyfileobj(f, out, chunk_size)


def create_bundle(
    out_path,
    payloads,
    keys,
    version,
    security_version,
    compatible,
    expires,
    created=None,
    components=None,
):
    """Write a signed bundle to out_path and return its Manifest.

    payloads: [PayloadSource]; keys: private keys (each adds a signature); compatible:
    [{"model": str, "hardware_revisions": [str]}]; created/expires: epoch seconds.
    """
    created = int(time.time()) if created is None else int(created)
    workdir = os.path.dirname(os.path.abspath(out_path))
    staged = []
    try:
        for source in payloads:
            staged.append(_stage(source, workdir))
        indexes = [index for _, _, index in staged if index is not None]
        fields = {
            "format": FORMAT_CHUNKED if indexes else FORMAT,
            "version": version,
            "security_version": security_version,
            "created": timefmt.format(created),
            "expires": timefmt.format(int(expires)),
            "compatible": compatible,
            "payloads": [entry for entry, _, _ in staged],
        }
        if components:
            fields["components"] = dict(components)
        raw = manifest_bytes(fields)
        manifest = parse_manifest(raw)  # refuse to sign what a device would refuse to read
        envelope = sign_envelope(MANIFEST_TYPE, raw, keys).encode()
        tmp = out_path + ".tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(fmt.encode_header(envelope, fmt.MAGIC2 if indexes else fmt.MAGIC))
                out.write(envelope)
                for index in indexes:
                    out.write(index)
                for _, path, _ in staged:
                    _copy(path, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, out_path)
        except BaseException:
            if os.path.isfile(tmp):
                os.unlink(tmp)  # never leave a half-written bundle behind
            raise
        fsync_dir(workdir)
    finally:
        for source, (_, path, _) in zip(payloads, staged):
            if path != source.path:
                os.unlink(path)
    return manifest
