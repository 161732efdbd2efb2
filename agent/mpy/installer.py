"""Download, verify and write an update into the inactive OTA partition, streaming.

The signed header (12 bytes + envelope, bounded) is read first and verified before a payload
byte is read; then the one `app` payload streams through SHA-256 (stored bytes), `deflate`
(gzip payloads), SHA-256 again (installed bytes) and 4 KiB block writes into the partition.
Finally the partition is read back and hashed. Only then does the caller set_boot it.

Invariant: the download never reads more than the bundle's signed size; a payload whose
hashes or sizes differ from the signed manifest raises PayloadMismatch (rejected), a read-back
that differs ReadbackMismatch, before anything points the bootloader at the slot.
"""

import binascii
import hashlib
import io

from agent.core.envelope import MANIFEST_TYPE, MAX_ENVELOPE, parse_envelope
from agent.core.errors import MalformedBundle, NoSpace, PayloadMismatch, ReadbackMismatch
from agent.core.jobs import check_version
from agent.mpy.http import Download

HEADER = 12
MAGIC = b"CUBNDL1\n"
BLOCK = 4096


def _hex(h):
    return binascii.hexlify(h.digest()).decode()


def read_envelope(source):
    head = source.read_exact(HEADER, "header")
    if head[:8] != MAGIC:
        raise MalformedBundle("not a charger-update bundle (bad magic)")
    length = int.from_bytes(head[8:12], "big")
    if not 1 <= length <= MAX_ENVELOPE:
        raise MalformedBundle("bundle header announces a %d-byte envelope" % length)
    return parse_envelope(source.read_exact(length, "signature envelope"), MANIFEST_TYPE)


def fetch_header(url, timeout_s=10, poll=None):
    """The signed envelope at the start of the bundle at `url` (nothing more is read)."""
    source = Download(url, HEADER + MAX_ENVELOPE, timeout_s, on_wait=poll)
    try:
        return read_envelope(source)
    finally:
        source.close()


def app_payload(manifest, slot_class):
    found = [p for p in manifest.payloads if p.slot_class == slot_class]
    others = [p.name for p in manifest.payloads if p.slot_class != slot_class]
    if len(found) != 1 or others:
        raise MalformedBundle(
            "this board installs exactly one %r payload; the bundle has %s"
            % (slot_class, ", ".join(p.name + ":" + p.slot_class for p in manifest.payloads))
        )
    return found[0]


class _Tap(io.IOBase):
    """The payload's stored bytes as a stream for DeflateIO, hashed on the way through
    (DeflateIO takes only native streams or io.IOBase subclasses)."""

    def __init__(self, source, size, poll):
        self.source, self.left, self.poll = source, size, poll
        self.digest = hashlib.sha256()
        self.reads = 0

    def readinto(self, buf):
        if self.left <= 0:
            return 0
        data = self.source.read(min(len(buf), self.left))
        if not data:
            return 0
        buf[: len(data)] = data
        self.digest.update(data)
        self.left -= len(data)
        self.reads += 1
        if self.poll is not None and self.reads % 16 == 0:
            self.poll()
        return len(data)

    def read(self, n):
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])


def install(url, trust, device, floor, now, partition, slot_class, timeout_s=10,
            progress=None, poll=None, version=None):  # fmt: skip
    """Stream the bundle at `url` into `partition`; returns the verified manifest. `version`:
    the job's, which the signed one must equal before anything is written."""
    source = Download(url, HEADER + MAX_ENVELOPE, timeout_s, on_wait=poll)
    try:
        envelope = read_envelope(source)
        manifest = trust.verify(envelope, device, floor, now)
        check_version(version, manifest.version)
        payload = app_payload(manifest, slot_class)
        source.limit = source.pos + payload.size  # the hard bound: the signed size
        if payload.installed_size > partition.info()[3]:
            raise NoSpace("image of %d bytes does not fit partition of %d"
                          % (payload.installed_size, partition.info()[3]))  # fmt: skip
        _write(source, payload, partition, progress, poll)
        _read_back(partition, payload)
        return manifest
    finally:
        source.close()


def _write(source, payload, partition, progress, poll):
    tap = _Tap(source, payload.size, poll)
    stream = tap
    if payload.compression == "gzip":
        import gc

        import deflate

        gc.collect()  # the inflater's 32 KiB window needs one contiguous block
        stream = deflate.DeflateIO(tap, deflate.GZIP)
    installed = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    block = written = 0
    while True:
        try:
            got = _fill(stream, view)
        except (OSError, ValueError) as e:  # deflate refuses what the signer never made
            raise PayloadMismatch("payload %s does not inflate: %s" % (payload.name, e))
        if got == 0:
            break
        written += got
        if written > payload.installed_size:
            raise PayloadMismatch("payload %s inflates past its signed size" % payload.name)
        installed.update(view[:got])
        if got < BLOCK:
            for i in range(got, BLOCK):
                buf[i] = 0xFF
        partition.writeblocks(block, buf)
        block += 1
        if progress is not None:
            progress(written, payload.installed_size)
    if tap.left or _hex(tap.digest) != payload.sha256:
        raise PayloadMismatch("payload %s differs from the signed sha256/size" % payload.name)
    if written != payload.installed_size or _hex(installed) != payload.installed_sha256:
        raise PayloadMismatch("payload %s does not inflate to its signed size/sha256"
                              % payload.name)  # fmt: skip


def _fill(stream, view):
    """Read until the 4 KiB block is full or the stream ends (DeflateIO returns short reads)."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_back(partition, payload):
    digest = hashlib.sha256()
    buf = bytearray(BLOCK)
    left = payload.installed_size
    block = 0
    while left > 0:
        partition.readblocks(block, buf)
        digest.update(buf[: min(BLOCK, left)])
        left -= BLOCK
        block += 1
    if _hex(digest) != payload.installed_sha256:
        raise ReadbackMismatch("partition %s reads back differently from what was written"
                               % partition.info()[4])  # fmt: skip
