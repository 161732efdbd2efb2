"""The whole file at a location, as a detached signature (OCPP) sees it: every byte hashed.

Invariant: the digest covers exactly the bytes the server sent, in order, from the first to
the last, and never more than the bound: the length the file's own (not yet verified) bundle
header claims, or `max_bytes` for a file that is not one of our bundles. `HashingSource`
wraps a Source so an install hashes what it streams into the slot, and the slot can be checked
against the signature before it is ever handed to the bootloader.
"""

import hashlib

from agent.bundle import format as fmt
from agent.bundle.reader import read_exact
from agent.core.envelope import MANIFEST_TYPE, parse_envelope
from agent.core.errors import PayloadMismatch
from agent.core.manifest import parse_manifest
from agent.transfer.fetch import open_source

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 4 << 30  # a file that is not our bundle: no signed length to bound it


class HashingSource:
    """A Source whose read/readinto also feed a SHA-256 of everything read."""

    def __init__(self, source):
        self.source = source
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n):
        data = self.source.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, view):
        got = self.source.readinto(view)
        self.hash.update(memoryview(view)[:got])
        self.count += got
        return got

    def digest(self):
        return self.hash.digest()

    def __getattr__(self, name):  # set_limit, expect_end, size, location, close ...
        return getattr(self.source, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.source.close()


def _read_upto(read, n):
    parts, got = [], 0
    while got < n:
        block = read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def fetch(location, settings, max_bytes=DEFAULT_MAX_BYTES, opener=None):
    """Stream the whole file once: (sha256 digest, size, envelope or None). The envelope is
    the bundle's signed header, parsed but NOT verified (None: not one of our bundles).
    opener(location, settings): the source (a job's: fetch.open_job_source with its stopper)."""
    with (opener or open_source)(location, settings) as raw:
        source = HashingSource(raw)
        head = _read_upto(source.read, fmt.HEADER_SIZE)
        envelope, limit = None, max_bytes
        if head[: len(fmt.MAGIC)] == fmt.MAGIC:
            length = fmt.parse_header(head)
            envelope = parse_envelope(read_exact(source.read, length, "signature envelope"),
                                      MANIFEST_TYPE)  # fmt: skip
            limit = fmt.bundle_size(length, parse_manifest(envelope.payload))
            raw.set_limit(limit)
        while True:
            block = source.read(CHUNK)
            if not block:
                break
            if source.count > limit:
                raise PayloadMismatch(
                    "%s is larger than %d bytes" % (location, limit),
                    hint="raise [ocpp_firmware] max_firmware_bytes if the file really is that big",
                )
        return source.digest(), source.count, envelope
