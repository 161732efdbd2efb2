"""Slot targets and the streaming write pipeline: source -> hash (-> inflate) -> slot, with the
read-back running behind the writer, then fsync and the last of the read-back.

Invariant: `write_payload` returns only if exactly `payload.size` stored bytes with the signed
sha256 were read, their installed form is exactly `installed_size` bytes, everything is
fsynced, and reading the slot back gives `installed_sha256`. Otherwise it raises and the
slot's contents must be treated as garbage (the caller never marks it bootable). Memory is
bounded by a few chunks: bounded queues between the reading, hashing and writing threads
(agent/transfer/pipeline.py), gzip output capped per call with `max_length` (a
decompression bomb can never produce more than installed_size bytes, nor more than one chunk
at a time), and the written data pushed out in windows so dirty pages stay bounded too.

Writes: O_DIRECT where the slot's filesystem or device takes it (DirectSlotWriter): chunks
read with `readinto` into page-aligned buffers (ChunkBuffers) go from there to the medium,
with no copy into the page cache; elsewhere buffered writes pushed out in windows.

Read-back: once a window is on the medium (a direct write returned, or a buffered window's
writeback was waited for and dropped from the page cache with posix_fadvise DONTNEED) a
read-back thread reads and hashes it while later windows are still being written; the tail
is read after the final fsync. Direct writes leave nothing in the page cache, so the
read-back reads the medium (or the device's own cache); on the buffered path the kernel may
still serve pages it chose to keep. The check catches a wrong write path (wrong offset,
wrong device, a driver that drops writes it acknowledged).
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import stat
import struct
import threading
import zlib

from agent.core.errors import ConfigError, NoSpace, PayloadMismatch, ReadbackMismatch, Truncated
from agent.transfer.pipeline import prefetch

log = logging.getLogger("charger-update")

# Written data is pushed to the medium in windows of this size while later chunks are still
# being hashed, and the window before is waited for and dropped from the cache: the final
# fsync then only has a tail to flush, and dirty pages stay bounded on a small-RAM charger.
WRITEBACK_WINDOW = 8 << 20
BLKGETSIZE64 = 0x80081272  # <linux/fs.h>: _IOR(0x12, 114, size_t)
# O_DIRECT wants buffer address, length and file offset aligned to the logical block size;
# 4 KiB covers 512-byte and 4K-native media and page-sized filesystem blocks.
ALIGN = 4096
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere every slot is written buffered


class SlotTarget:
    """A slot as a file (created/truncated on write) or a block device (never truncated)."""

    # The delta install reads blocks of the slot's old content while it writes the new one:
    # then a file slot is cut to the payload's length only at the end, not emptied first.
    keep_content = False

    def __init__(self, path, readback=True):
        self.path = path
        self.readback = readback  # False: [readback] turned the read-back off for this slot
        try:
            self.is_block = stat.S_ISBLK(os.stat(path).st_mode)
        except FileNotFoundError:
            self.is_block = False

    def __repr__(self):
        return "SlotTarget(%r)" % self.path

    def capacity(self):
        """Bytes a payload may occupy in this slot."""
        if self.is_block:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                return device_size(fd)
            finally:
                os.close(fd)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            st = os.statvfs(directory)
        except OSError as e:
            raise _unusable(self.path, e) from None
        free = st.f_bavail * st.f_frsize
        try:
            free += os.stat(self.path).st_blocks * 512  # freed when the file is truncated
        except FileNotFoundError:
            pass
        return free

    def open_writer(self):
        """O_DIRECT where the medium takes it, else buffered with windowed writeback (tmpfs
        and other filesystems without direct I/O)."""
        created = not self.is_block and not os.path.exists(self.path)
        if O_DIRECT:
            try:
                return DirectSlotWriter(self, created)
            except DirectUnsupported:
                pass
        return SlotWriter(self, created)

    def open_reader(self):
        return SlotReader(self.path)


def _unusable(path, error):
    """A slot path that cannot be opened is a set-up mistake, not a transient fault."""
    return ConfigError(
        "slot target %s cannot be used: %s" % (path, error.strerror or error),
        hint="check the [slots] paths in the config and that the agent may write them",
    )


def device_size(fd):
    """Size of a block device: the BLKGETSIZE64 ioctl, else seeking to its end."""
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    except OSError:
        return os.lseek(fd, 0, os.SEEK_END)


def _load_sync_file_range():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux/glibc: the final fsync does all the work
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


_sync_file_range = _load_sync_file_range()
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4


class DirectUnsupported(Exception):
    """The slot's filesystem refuses O_DIRECT: write it through the page cache instead."""


class SlotWriter:
    """Buffered writes through the page cache, pushed out in windows (sync_file_range)."""

    _os_write = staticmethod(os.write)  # the one call a fault-injecting test replaces

    def __init__(self, target, created=None, extra_flags=0):
        self.target = target
        if target.is_block:
            flags = os.O_WRONLY  # never O_TRUNC/O_CREAT on a device
            created = False
        else:
            flags = os.O_WRONLY | os.O_CREAT | (0 if target.keep_content else os.O_TRUNC)
            if created is None:
                created = not os.path.exists(target.path)
        self.created = created  # then the directory entry is fsynced too
        try:
            self.fd = os.open(target.path, flags | extra_flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            if extra_flags and e.errno == errno.EINVAL:
                raise DirectUnsupported() from None
            raise _unusable(target.path, e) from None
        self.written = 0  # bytes on their way to the medium, in order from offset 0
        self.kicked = 0  # bytes whose writeback has been started
        self.previous = None  # (offset, length) of the window started before
        self.on_settled = None  # called with N once bytes [0, N) are on the medium

    def write(self, data):
        self._write_out(memoryview(data))
        if _sync_file_range is not None and self.written - self.kicked >= WRITEBACK_WINDOW:
            self._writeback()

    def _write_out(self, view):
        try:
            while view:
                n = self._os_write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG):
                raise NoSpace(
                    "slot %s is full after %d bytes" % (self.target.path, self.written),
                    hint="free space or give the slot a bigger partition",
                ) from None
            raise

    def _writeback(self):
        """Start writing the newest window; wait for the one before and drop it from the cache.
        Not a durability point (no metadata, no device flush): `sync` is."""
        window = (self.kicked, self.written - self.kicked)
        _sync_file_range(self.fd, window[0], window[1], SFR_WRITE)
        if self.previous is not None:
            offset, length = self.previous
            _sync_file_range(self.fd, offset, length, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
            if self.on_settled is not None:
                self.on_settled(offset + length)
        self.previous = window
        self.kicked = self.written

    def sync(self):
        if self.target.keep_content and not self.target.is_block:
            os.ftruncate(self.fd, self.written)  # the old content may have been longer
        os.fsync(self.fd)
        # Drop the now-clean pages so the read-back reads the medium, not our own cache.
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if self.created:
            dirfd = os.open(os.path.dirname(os.path.abspath(self.target.path)), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)

    def close(self):
        os.close(self.fd)


class DirectSlotWriter(SlotWriter):
    """Writes that bypass the page cache (O_DIRECT). A chunk that sits in one of the
    pipeline's page-aligned buffers goes from there to the medium: no copy into the page
    cache, no dirty pages to push out or drop, and about a sixth less CPU per GiB than the
    buffered path (docs/transfer.md). Anything else (gzip output, a chunk that is
    not a whole number of blocks) is gathered in an aligned staging buffer first; the last
    partial block, which O_DIRECT cannot write, goes through the page cache in `sync`. A
    direct write returns once the device has the data, so the read-back may follow it.
    If the device refuses a direct write (EINVAL: it wants another alignment), the writer
    carries on as a buffered SlotWriter from that byte on."""

    STAGE = 1 << 20

    def __init__(self, target, created=None):
        SlotWriter.__init__(self, target, created, O_DIRECT)
        self.direct = True
        self.stage = mmap.mmap(-1, self.STAGE)  # anonymous mmap: page-aligned
        self.staged = memoryview(self.stage)
        self.fill = 0  # bytes in the staging buffer, not yet written
        self.reported = 0  # last mark handed to on_settled

    def write(self, data):
        if not self.direct:
            self._flush_stage()
            return SlotWriter.write(self, data)
        data = memoryview(data).cast("B")
        if self.fill == 0 and len(data) % ALIGN == 0 and _aligned(data):
            self._write_out(data)  # straight from the pipeline's buffer
        else:
            self._stage(data)
        if self.direct and self.on_settled and self.written - self.reported >= WRITEBACK_WINDOW:
            self.reported = self.written
            self.on_settled(self.written)

    def _stage(self, data):
        while data:
            n = min(len(data), self.STAGE - self.fill)
            self.staged[self.fill : self.fill + n] = data[:n]
            self.fill += n
            data = data[n:]
            if self.fill == self.STAGE:
                self._flush_stage()

    def _flush_stage(self):
        if self.fill:
            self._write_out(self.staged[: self.fill])
            self.fill = 0

    def _write_out(self, view):
        start = self.written
        try:
            SlotWriter._write_out(self, view)
        except OSError as e:
            if e.errno != errno.EINVAL or not self.direct:
                raise
            log.warning(
                "slot %s refused a direct write at byte %d (%s); writing it buffered",
                self.target.path, self.written, e.strerror,
            )  # fmt: skip
            self._buffered()
            self.kicked = self.written  # windowed writeback from here on, as SlotWriter does
            SlotWriter._write_out(self, view[self.written - start :])

    def _buffered(self):
        _direct_off(self.fd)
        self.direct = False

    def sync(self):
        whole = self.fill - self.fill % ALIGN
        if whole:
            self._write_out(self.staged[:whole])
        if self.fill > whole:
            if self.direct:
                self._buffered()  # less than a block: only the page cache can write it
            self._write_out(self.staged[whole : self.fill])
        self.fill = 0
        SlotWriter.sync(self)

    def close(self):
        try:
            SlotWriter.close(self)
        finally:
            self.staged.release()
            try:
                self.stage.close()
            except BufferError:
                pass  # a traceback still holds a slice of it: freed with the last one


def _direct_off(fd):
    """Turn O_DIRECT off on an open file: its I/O goes through the page cache from now on."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


def _aligned(view):
    """Whether a buffer starts on an ALIGN boundary. Read-only ones (bytes) are taken as
    unaligned: ctypes can only find the address of a writable buffer."""
    if not len(view) or view.readonly:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % ALIGN == 0


class SlotReader:
    """Reads a slot back: O_DIRECT where the medium takes it, so the bytes come from the
    medium and not from the page cache; else buffered, after dropping the cached pages."""

    def __init__(self, path):
        self.direct = False
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        if O_DIRECT:
            try:
                self.fd = os.open(path, flags | O_DIRECT)
                self.direct = True
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        self.fd = os.open(path, flags)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def readinto(self, view):
        """Fill `view` (page-aligned, a whole number of blocks) from the current offset; the
        count read, short only at the end of the slot."""
        try:
            return os.readv(self.fd, [view])
        except OSError as e:
            if e.errno != errno.EINVAL or not self.direct:
                raise
            # The medium wants another alignment: read through the page cache instead.
            _direct_off(self.fd)
            self.direct = False
            return os.readv(self.fd, [view])

    def close(self):
        os.close(self.fd)


def check_space(target, needed):
    """Raise NoSpace with the figures if `needed` bytes do not fit into `target`."""
    available = target.capacity()
    if needed > available:
        raise NoSpace(
            "slot %s has room for %d bytes (%.1f MiB); the payload needs %d (%.1f MiB)"
            % (target.path, available, available / 1048576.0, needed, needed / 1048576.0),
            hint="free %.1f MiB or give the slot a bigger partition"
            % ((needed - available) / 1048576.0),
        )


def write_payload(
    read, payload, target, chunk_size=1 << 20, progress=None, readback=True, readinto=None
):
    """Stream one payload from `read(n)` into `target` (a SlotTarget or a path); see the
    module docstring for what success guarantees. With `readinto(buffer)` (agent.transfer.fetch
    sources have it) the data lands in page-aligned buffers that a direct writer hands to
    the medium without copying. `readback=False` exists for measuring."""
    if not isinstance(target, SlotTarget):
        target = SlotTarget(target)
    check_space(target, payload.installed_size)
    zero_copy = readinto is not None and payload.compression == "none"
    buffers = ChunkBuffers(chunk_size) if zero_copy else None
    chunks = installed_chunks(
        read, payload, chunk_size, progress, readinto=readinto, buffers=buffers
    )
    write_chunks(chunks, payload, target, chunk_size, readback, buffers)


def write_chunks(chunks, payload, target, chunk_size=1 << 20, readback=True, buffers=None):
    """Write the installed bytes that `chunks` yields into `target`, in a pipeline thread,
    then fsync, check the length and the read-back. The caller's `chunks` checks what it
    yields (sha256 against the manifest) and raises from its last step if it differs."""
    readback = readback and getattr(target, "readback", True)
    # Whatever fails, every descriptor is closed and the read-back thread stopped.
    with contextlib.ExitStack() as cleanup:
        writer = target.open_writer()
        cleanup.callback(writer.close)
        behind = None
        if readback:
            behind = _ReadBehind(target, payload, chunk_size)
            cleanup.callback(behind.abort)
            writer.on_settled = behind.advance
        # Threads: reading (network/file), hashing (+ inflating), writing here, and the
        # read-back hashing what has reached the medium behind the writer.
        pipeline = prefetch(chunks)
        cleanup.callback(pipeline.close)  # stops and joins the reading and hashing threads
        for chunk in pipeline:
            writer.write(chunk)
            if buffers is not None:
                buffers.give_back(chunk)
        writer.sync()
        if writer.written != payload.installed_size:
            raise PayloadMismatch(
                "payload %s installs as %d bytes, the manifest says %d"
                % (payload.name, writer.written, payload.installed_size)
            )
        if behind is not None:
            behind.finish()


class ChunkBuffers:
    """Page-aligned chunk buffers (anonymous mmap) reused along the pipeline: the reader
    fills one, the hasher reads it, the writer hands it to the medium and gives it back.
    No more exist than chunks are in flight at once, which the pipeline's queues bound."""

    def __init__(self, size):
        self.size = size
        self.free = []

    def take(self):
        try:
            return self.free.pop()  # list.pop/append are atomic: no lock needed
        except IndexError:
            return mmap.mmap(-1, self.size)

    def give_back(self, view):
        buf = getattr(view, "obj", None)
        if isinstance(buf, mmap.mmap) and len(buf) == self.size:
            view.release()
            self.free.append(buf)


def installed_chunks(
    read, payload, chunk_size=1 << 20, progress=None, threaded=True, readinto=None, buffers=None
):
    """The payload's installed bytes, chunk by chunk: exactly payload.size stored bytes are
    pulled through read(n), or readinto(buffer) into `buffers` (in a reader thread when
    `threaded`), their sha256 is checked against the manifest after the last one
    (PayloadMismatch), and gzip is inflated within installed_size. The caller checks the
    installed length/sha256 of what it consumed."""
    if readinto is not None and buffers is not None:
        stored = read_into_buffers(readinto, payload, buffers)
    else:
        stored = _read_exactly(read, payload, chunk_size)
    chunks = _checked(prefetch(stored) if threaded else stored, payload, progress)
    if payload.compression == "gzip":
        return _inflate(chunks, payload, chunk_size)
    if payload.compression != "none":
        raise PayloadMismatch(
            "payload %s has unknown compression %r" % (payload.name, payload.compression)
        )
    return chunks


def _read_exactly(read, payload, chunk_size):
    """Exactly payload.size bytes from `read`, never one more (the next payload follows)."""
    left = payload.size
    while left:
        data = read(min(chunk_size, left))
        if not data:
            raise _cut(payload, payload.size - left)
        if len(data) > left:
            raise PayloadMismatch("source returned more than asked for payload %s" % payload.name)
        left -= len(data)
        yield data


def read_into_buffers(readinto, payload, buffers):
    """Exactly payload.size bytes through `readinto`, as views of whole `buffers` (a short
    read is topped up, so every chunk but the last fills its buffer and the direct writer
    can take it as it is). The consumer gives each view back to `buffers` when done."""
    left = payload.size
    while left:
        view = memoryview(buffers.take())[: min(buffers.size, left)]
        got = 0
        while got < len(view):
            n = readinto(view[got:])
            if not n:
                raise _cut(payload, payload.size - left + got)
            got += n
        left -= got
        yield view


def _cut(payload, got):
    return Truncated(
        "payload %s ended after %d of %d bytes" % (payload.name, got, payload.size),
        hint="the bundle is incomplete; download it again",
    )


def _checked(chunks, payload, progress):
    """Pass chunks on while hashing them; the check comes after the last one."""
    digest = hashlib.sha256()
    for data in chunks:
        digest.update(data)  # releases the GIL: overlaps with the reader and writer threads
        if progress is not None:
            progress.update(len(data))
        yield data
    if digest.hexdigest() != payload.sha256:
        raise PayloadMismatch(
            "payload %s: sha256 %s does not match the signed manifest (%s)"
            % (payload.name, digest.hexdigest(), payload.sha256),
            hint="the bundle was altered or corrupted; the slot was not marked bootable",
        )


def _inflate(chunks, payload, chunk_size):
    """gzip -> installed bytes, never more than installed_size nor chunk_size per step."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer required
    produced = 0
    for data in chunks:
        pending = data
        while True:
            if inflater.eof:
                if pending or inflater.unused_data:
                    raise PayloadMismatch("payload %s has data after its gzip end" % payload.name)
                break
            # One byte more than allowed is enough to know the stream is too long.
            room = min(chunk_size, payload.installed_size - produced + 1)
            try:
                out = inflater.decompress(pending, room)
            except zlib.error as e:
                raise PayloadMismatch("payload %s: corrupt gzip (%s)" % (payload.name, e)) from None
            pending = inflater.unconsumed_tail
            produced += len(out)
            if produced > payload.installed_size:
                raise PayloadMismatch(
                    "payload %s expands beyond its installed size of %d bytes"
                    % (payload.name, payload.installed_size),
                    hint="decompression bomb or wrong manifest; stopped at the bound",
                )
            if out:
                yield out
            if not pending and len(out) < room:
                break
    if not inflater.eof:
        raise PayloadMismatch("payload %s: gzip stream is incomplete" % payload.name)
    if inflater.unused_data:
        raise PayloadMismatch("payload %s has data after its gzip end" % payload.name)


class _ReadBehind:
    """The read-back, overlapped with the write: as the writer reports that bytes [0, N) are
    on the medium, a reader thread reads them back into aligned buffers and this one hashes
    them; `finish` has the rest read after the final fsync. Without such reports (buffered
    writes without sync_file_range) it all happens in `finish`."""

    DEPTH = 2  # chunks read ahead of the hashing

    def __init__(self, target, payload, chunk_size):
        self.target = target
        self.payload = payload
        self.reader = target.open_reader()
        self.buffers = ChunkBuffers(_round_up(chunk_size))
        self.digest = hashlib.sha256()
        self.got = 0
        self.marks = queue.Queue()
        self.failure = []
        self.thread = threading.Thread(target=self._run, name="slot-readback", daemon=True)
        self.thread.start()

    def advance(self, upto):
        self.marks.put(upto)

    def _run(self):
        try:
            for view in prefetch(self._chunks(), self.DEPTH):
                self.digest.update(view)
                self.got += len(view)
                self.buffers.give_back(view)
        except BaseException as e:  # raised by finish()
            self.failure.append(e)

    def _chunks(self):
        """The slot's first installed_size bytes as they reach the medium; ends early if the
        slot is short. Every read but the last starts and ends on an ALIGN boundary, as
        O_DIRECT needs; the last is rounded up and cut to what belongs to the payload."""
        size = self.payload.installed_size
        pos = upto = 0
        while pos < size:
            # Whole blocks only, until the writer's last mark: then the rest, however long.
            ready = upto - pos if upto == size else (upto - pos) // ALIGN * ALIGN
            if ready <= 0:
                mark = self.marks.get()
                if mark is None:
                    return
                upto = min(mark, size)
                continue
            want = min(self.buffers.size, ready)
            view = memoryview(self.buffers.take())
            n = self.reader.readinto(view[: _round_up(want)])
            yield view[: min(n, want)]
            if n < want:
                return  # the slot ends early: the length check in finish() reports it
            pos += want

    def abort(self):
        """Stop the thread and close the slot; a second call does nothing."""
        if self.reader is None:
            return
        self.marks.put(None)
        self.thread.join()
        self.reader.close()
        self.reader = None

    def finish(self):
        self.marks.put(self.payload.installed_size)
        self.abort()
        if self.failure:
            raise self.failure[0]
        _compare_readback(self.target, self.payload, self.got, self.digest.hexdigest())


def _round_up(n):
    return -(-n // ALIGN) * ALIGN


def _compare_readback(target, payload, got, sha256):
    if got != payload.installed_size or sha256 != payload.installed_sha256:
        raise ReadbackMismatch(
            "slot %s reads back %d bytes with sha256 %s, expected %d bytes with %s"
            % (target.path, got, sha256, payload.installed_size, payload.installed_sha256),
            hint="the storage did not keep what was written; check the medium",
        )
