"""Write a verified update into the inactive OTA partition, streaming.

The second half of an install (agent/mpy/header.py's check() is the first, in its own phase
and with no connection open, so the verifiers and the inflater never share the heap):
write() streams the bundle, checks that its header hashes to exactly what check() verified,
then streams the payload through SHA-256 (stored bytes), `deflate` (gzip payloads, with the
window the manifest signed), SHA-256 again (installed bytes) and chunk-sized writes into the
partition (each 4 KiB flash block erased before its first chunk). Finally the partition is
read back and hashed. Only then does the caller set_boot it.

Heap: one chunk buffer (`chunk_bytes`, 4096 by default, 1024 on a small board), the inflate
window (2**window_bits) and uzlib's state; a payload whose window exceeds `max_window_bits` is
refused by check() before anything is written (header.WindowTooLarge), never a MemoryError
mid-write.

Invariant: the download never reads more than the bundle's signed size; a payload whose
hashes or sizes differ from the signed manifest raises PayloadMismatch (rejected), a read-back
that differs ReadbackMismatch, before anything points the bootloader at the slot.
"""

import binascii
import hashlib
import io

from agent.core.errors import PayloadMismatch, ReadbackMismatch

BLOCK = 4096  # the flash erase unit: esp32.Partition's block size
TAP_BYTES = 512  # stored bytes buffered for the inflater, which pulls one byte per call


def _hex(h):
    return binascii.hexlify(h.digest()).decode()


def write(url, facts, partition, options, progress=None, poll=None, room=None):
    """Second half: stream the bundle at `url` into `partition`, after checking that it starts
    with the very header check() verified (PayloadMismatch otherwise). `room`: a list holding
    a buffer the size of the inflater's state and window, taken when the heap was young
    (Agent.reserve_window); it is emptied (and collected) just before the inflater's first
    read, so both land in that one free run, however fragmented the rest of the heap."""
    from agent.mpy.http import Download

    chunk = _chunk_size(options.get("chunk_bytes", BLOCK))
    size = facts["header_size"]
    # The hard bound: the verified header and the signed payload size, nothing more.
    source = Download(url, size + facts["size"], options.get("timeout_s", 10), on_wait=poll,
                      tls=options.get("tls"), max_time_s=options.get("max_time_s", 0),
                      room=room)  # fmt: skip
    try:
        buf = bytearray(chunk)
        digest = hashlib.sha256()
        left = size
        while left:
            got = source.readinto(memoryview(buf)[: min(chunk, left)])
            if not got:
                raise PayloadMismatch("the bundle ends inside the header it had when verified")
            digest.update(memoryview(buf)[:got])
            left -= got
        buf = None
        if _hex(digest) != facts["header_sha256"]:
            raise PayloadMismatch("the bundle's signed header changed since it was verified")
        _write(source, facts, partition, chunk, progress, poll, room)
        _read_back(partition, facts, chunk)
    finally:
        source.close()


def _chunk_size(n):
    n = int(n)
    if n < 256 or n > BLOCK or BLOCK % n:
        raise ValueError("install chunk_bytes must divide %d and be at least 256" % BLOCK)
    return n


class _Tap(io.IOBase):
    """The payload's stored bytes for DeflateIO, which pulls them one byte per call: served
    from a small buffer refilled from the download and hashed as it is refilled (DeflateIO
    takes only native streams or io.IOBase subclasses)."""

    def __init__(self, source, size, poll):
        self.source, self.left, self.poll = source, size, poll
        self.buf = bytearray(TAP_BYTES)
        self.start = self.end = 0
        self.digest = hashlib.sha256()
        self.refills = 0

    def _refill(self):
        n = min(len(self.buf), self.left)
        got = self.source.readinto(memoryview(self.buf)[:n]) if n > 0 else 0
        self.digest.update(memoryview(self.buf)[:got])
        self.left -= got
        self.start, self.end = 0, got
        self.refills += 1
        if self.poll is not None and self.refills % 64 == 0:
            self.poll()
        return got

    def readinto(self, buf):
        if self.start == self.end and not self._refill():
            return 0
        n = min(len(buf), self.end - self.start)
        if n == 1:
            buf[0] = self.buf[self.start]
        else:
            buf[:n] = memoryview(self.buf)[self.start : self.start + n]
        self.start += n
        return n


def _write(source, facts, partition, chunk, progress, poll, room):
    isize = facts["installed_size"]
    if facts["compression"] == "gzip":
        import deflate

        tap = _Tap(source, facts["size"], poll)
        stream = deflate.DeflateIO(tap, deflate.GZIP, facts["window_bits"])
    else:
        tap, stream = None, source
    installed = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    written = 0
    if room:  # the inflater's first read allocates its state, then (after the gzip header)
        import gc  # its window: both land in the room, made free just before

        room.clear()
        gc.collect()
    while True:
        try:
            got = _fill(stream, view)
        except (OSError, ValueError, EOFError) as e:  # deflate refuses what the signer never made
            raise PayloadMismatch("payload %s does not inflate: %r" % (facts["name"], e))
        if got == 0:
            break
        if written + got > isize:
            raise PayloadMismatch("payload %s is longer than its signed size" % facts["name"])
        installed.update(view[:got] if got < chunk else buf)
        for i in range(got, chunk):
            buf[i] = 0xFF  # the tail of the last chunk: erased flash
        block, offset = divmod(written, BLOCK)
        if offset == 0:
            partition.ioctl(6, block)  # BLOCK_ERASE before the block's first chunk
        partition.writeblocks(block, buf, offset)
        written += got
        if progress is not None:
            progress(written, isize)
        if tap is None and poll is not None and written % (16 * BLOCK) == 0:
            poll()
    stored = tap.digest if tap is not None else installed
    if (tap is not None and tap.left) or _hex(stored) != facts["sha256"]:
        raise PayloadMismatch("payload %s differs from the signed sha256/size" % facts["name"])
    if written != isize or _hex(installed) != facts["installed_sha256"]:
        raise PayloadMismatch("payload %s does not inflate to its signed size/sha256"
                              % facts["name"])  # fmt: skip


def _fill(stream, view):
    """Read until the chunk is full or the stream ends (both sources return short reads)."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_back(partition, facts, chunk):
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    left = facts["installed_size"]
    pos = 0
    while left > 0:
        partition.readblocks(pos // BLOCK, buf, pos % BLOCK)
        digest.update(buf if left >= chunk else memoryview(buf)[:left])
        left -= chunk
        pos += chunk
    if _hex(digest) != facts["installed_sha256"]:
        raise ReadbackMismatch("partition %s reads back differently from what was written"
                               % partition.info()[4])  # fmt: skip
