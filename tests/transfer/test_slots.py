"""write_payload into real file slots, with faults injected at the source and the medium."""

import errno
import gzip
import hashlib
import io
import os

import pytest

from agent.core.errors import NoSpace, PayloadMismatch, ReadbackMismatch, Truncated
from agent.transfer.pipeline import QUEUE_DEPTH
from agent.transfer.slots import (
    DirectSlotWriter,
    SlotReader,
    SlotTarget,
    SlotWriter,
    check_space,
    device_size,
    write_payload,
)
from tests.transfer.conftest import StandInPayload


def _install(read, payload, slot_path, marker):
    """What the installer does around write_payload: mark good only after it returned."""
    write_payload(read, payload, SlotTarget(str(slot_path)), chunk_size=64 * 1024)
    marker.write_text("good")


def test_round_trip_uncompressed(tmp_path, blob):
    payload = StandInPayload(blob)
    slot = tmp_path / "slot_b.img"
    slot.write_bytes(b"old contents that are longer than nothing" * 100000)
    write_payload(io.BytesIO(blob).read, payload, str(slot), chunk_size=64 * 1024)
    assert slot.read_bytes() == blob


def test_tampered_payload_hash_mismatch_never_marks_slot_good(tmp_path, blob):
    payload = StandInPayload(blob)
    tampered = bytearray(blob)
    tampered[len(blob) // 2] ^= 0x01
    marker = tmp_path / "slot_b.good"
    with pytest.raises(PayloadMismatch) as info:
        _install(io.BytesIO(bytes(tampered)).read, payload, tmp_path / "slot_b.img", marker)
    assert "does not match the signed manifest" in str(info.value)
    assert not marker.exists()


def test_truncated_payload_is_truncated(tmp_path, blob):
    payload = StandInPayload(blob)
    marker = tmp_path / "good"
    with pytest.raises(Truncated):
        _install(io.BytesIO(blob[:-1]).read, payload, tmp_path / "slot.img", marker)
    assert not marker.exists()


def test_write_payload_pulls_exactly_size_bytes(tmp_path, blob):
    """The next payload of the bundle must stay unread in the source."""
    payload = StandInPayload(blob)
    stream = io.BytesIO(blob + b"NEXT-PAYLOAD")
    write_payload(stream.read, payload, str(tmp_path / "s.img"))
    assert stream.read() == b"NEXT-PAYLOAD"


def test_gzip_round_trip(tmp_path, blob):
    installed = blob + bytes(2 * 1024 * 1024)  # zeros compress: output >> input per chunk
    stored = gzip.compress(installed, compresslevel=1)
    payload = StandInPayload(stored, installed, compression="gzip")
    slot = tmp_path / "slot.img"
    write_payload(io.BytesIO(stored).read, payload, str(slot), chunk_size=64 * 1024)
    assert slot.read_bytes() == installed


def test_gzip_decompression_bomb_rejected_at_installed_size(tmp_path):
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros, ~64 KiB
    claimed = bytes(1024 * 1024)
    payload = StandInPayload(bomb, claimed, compression="gzip")
    slot = tmp_path / "slot.img"
    sizes = []

    class Recording(SlotWriter):
        def write(self, data):
            sizes.append(len(data))
            SlotWriter.write(self, data)

    class Target(SlotTarget):
        def open_writer(self):
            return Recording(self)

    with pytest.raises(PayloadMismatch) as info:
        write_payload(io.BytesIO(bomb).read, payload, Target(str(slot)), chunk_size=64 * 1024)
    assert "expands beyond" in str(info.value)
    assert os.path.getsize(slot) <= len(claimed)
    # Memory stays bounded: no inflate step ever produced more than one chunk.
    assert max(sizes) <= 64 * 1024


def test_gzip_with_trailing_garbage_rejected(tmp_path, blob):
    stored = gzip.compress(blob[:1000]) + b"garbage"
    payload = StandInPayload(stored, blob[:1000], compression="gzip")
    with pytest.raises(PayloadMismatch):
        write_payload(io.BytesIO(stored).read, payload, str(tmp_path / "s.img"))


def test_gzip_stream_cut_short_rejected(tmp_path, blob):
    stored = gzip.compress(blob)[:-20]
    payload = StandInPayload(stored, blob, compression="gzip")
    with pytest.raises(PayloadMismatch):
        write_payload(io.BytesIO(stored).read, payload, str(tmp_path / "s.img"))


def test_no_space_reports_figures(tmp_path):
    target = SlotTarget(str(tmp_path / "slot.img"))
    free = target.capacity()
    with pytest.raises(NoSpace) as info:
        check_space(target, free + 1)
    assert str(free) in str(info.value) and str(free + 1) in str(info.value)
    check_space(target, 1)


def test_no_space_checked_before_any_byte_is_read(tmp_path):
    class Huge(StandInPayload):
        pass

    payload = Huge(b"x")
    payload.installed_size = 1 << 62
    calls = []
    with pytest.raises(NoSpace):
        write_payload(lambda n: calls.append(n) or b"", payload, str(tmp_path / "s.img"))
    assert calls == []


@pytest.mark.parametrize("writer_class", ["SlotWriter", "DirectSlotWriter"])
def test_disk_full_during_write_is_no_space(request, tmp_path, blob, writer_class):
    """Fault injection: the medium fills up after 1 MiB (ENOSPC from write(2))."""
    base = SlotWriter
    if writer_class == "DirectSlotWriter":
        tmp_path = request.getfixturevalue("direct_dir")
        base = DirectSlotWriter

    class FullDisk(base):
        def _os_write(self, fd, view):
            if self.written + len(view) > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, view)

    class FillingTarget(SlotTarget):
        def open_writer(self):
            return FullDisk(self)

    with _file_source(tmp_path, blob) as src:
        with pytest.raises(NoSpace) as info:
            write_payload(
                src.read, StandInPayload(blob), FillingTarget(str(tmp_path / "s")),
                readinto=src.readinto,
            )  # fmt: skip
    assert "full after 1048576 bytes" in str(info.value)


class _CorruptingReader(SlotReader):
    """Fault injection: the medium returns one flipped bit on read-back."""

    def __init__(self, path):
        SlotReader.__init__(self, path)
        self.flipped = False

    def readinto(self, view):
        n = SlotReader.readinto(self, view)
        if n and not self.flipped:
            self.flipped = True
            view[0] ^= 0x80
        return n


def test_readback_mismatch_from_corrupting_medium(tmp_path, blob):
    class BadMedium(SlotTarget):
        def open_reader(self):
            return _CorruptingReader(self.path)

    marker = tmp_path / "good"
    with pytest.raises(ReadbackMismatch):
        write_payload(io.BytesIO(blob).read, StandInPayload(blob), BadMedium(str(tmp_path / "s")))
        marker.write_text("good")
    assert not marker.exists()


def test_readback_mismatch_when_medium_drops_the_tail(tmp_path, blob):
    class ShortMedium(SlotTarget):
        def open_writer(self):
            writer = SlotTarget.open_writer(self)
            real = writer.sync

            def sync():
                real()
                os.ftruncate(writer.fd, len(blob) - 100)  # acknowledged, then lost

            writer.sync = sync
            return writer

    with pytest.raises(ReadbackMismatch):
        write_payload(io.BytesIO(blob).read, StandInPayload(blob), ShortMedium(str(tmp_path / "s")))


def test_block_device_like_target_is_not_truncated(tmp_path, blob):
    """A pre-sized image stands in for a partition: bytes after the payload stay."""
    image = tmp_path / "part.img"
    image.write_bytes(b"\xff" * (len(blob) + 4096))
    target = SlotTarget(str(image))
    target.is_block = True  # as for /dev/mmcblk0p3: open without O_TRUNC, size by ioctl/seek
    assert target.capacity() == len(blob) + 4096
    write_payload(io.BytesIO(blob).read, StandInPayload(blob), target)
    data = image.read_bytes()
    assert data[: len(blob)] == blob and data[len(blob) :] == b"\xff" * 4096


def test_device_size_falls_back_to_seek(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"a" * 12345)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        assert device_size(fd) == 12345
    finally:
        os.close(fd)


def test_progress_counts_stored_bytes(tmp_path, blob):
    seen = []

    class P:
        def update(self, n):
            seen.append(n)

    write_payload(io.BytesIO(blob).read, StandInPayload(blob), str(tmp_path / "s"), progress=P())
    assert sum(seen) == len(blob)
    assert hashlib.sha256((tmp_path / "s").read_bytes()).hexdigest() == StandInPayload(blob).sha256


@pytest.fixture
def small_windows(monkeypatch):
    """Writeback windows of 256 KiB, so a 3 MiB payload is read back window by window while
    it is still being written (the read-behind path), not only after the final fsync."""
    import agent.transfer.slots

    if agent.transfer.slots._sync_file_range is None:
        pytest.skip("no sync_file_range on this platform")
    monkeypatch.setattr(agent.transfer.slots, "WRITEBACK_WINDOW", 256 * 1024)


def test_readback_behind_the_writer_happens_during_the_write(
    tmp_path, blob, small_windows, monkeypatch
):
    import agent.transfer.slots

    marks = []
    advance = agent.transfer.slots._ReadBehind.advance
    monkeypatch.setattr(
        agent.transfer.slots._ReadBehind,
        "advance",
        lambda self, upto: marks.append(("settled", upto)) or advance(self, upto),
    )

    class Watching(SlotTarget):
        def open_writer(self):
            writer = SlotWriter(self)
            writer_sync = writer.sync
            writer.sync = lambda: marks.append(("sync", writer.written)) or writer_sync()
            return writer

    target = Watching(str(tmp_path / "s"))
    write_payload(io.BytesIO(blob).read, StandInPayload(blob), target, chunk_size=64 * 1024)
    # The writer handed settled windows to the read-back before the final fsync, in order.
    assert marks[-1] == ("sync", len(blob))
    settled = [upto for kind, upto in marks[:-1]]
    assert len(settled) >= 8 and settled == sorted(settled) and settled[-1] < len(blob)


def test_readback_mismatch_in_an_early_window_is_caught(tmp_path, blob, small_windows):
    class BadMedium(SlotTarget):
        def open_reader(self):
            return _CorruptingReader(self.path)

    with pytest.raises(ReadbackMismatch):
        write_payload(io.BytesIO(blob).read, StandInPayload(blob), BadMedium(str(tmp_path / "s")))


def test_tampered_payload_with_read_behind_raises_payload_mismatch(tmp_path, blob, small_windows):
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    with pytest.raises(PayloadMismatch):
        write_payload(
            io.BytesIO(bytes(tampered)).read, StandInPayload(blob), str(tmp_path / "slot.img")
        )
    assert threading_leftovers() == []


def threading_leftovers():
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("slot-")]


def test_slot_in_missing_directory_is_config_error(tmp_path, blob):
    from agent.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        write_payload(io.BytesIO(blob).read, StandInPayload(blob), str(tmp_path / "no" / "s.img"))
    assert "[slots]" in str(info.value)


# -- O_DIRECT writes -------------------------------------------------------------------------


@pytest.fixture
def direct_dir(tmp_path):
    """tmp_path, if its filesystem takes O_DIRECT (ext4 and tmpfs do here)."""
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT on this platform")
    probe = tmp_path / "probe"
    try:
        os.close(os.open(str(probe), os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError as e:
        pytest.skip("no O_DIRECT on %s: %s" % (tmp_path, e))
    probe.unlink()
    return tmp_path


def _file_source(tmp_path, data):
    from agent.transfer.fetch import open_source

    path = tmp_path / "bundle.bin"
    path.write_bytes(data)
    return open_source(str(path))


def test_file_slot_is_written_with_o_direct(direct_dir):
    writer = SlotTarget(str(direct_dir / "slot.img")).open_writer()
    try:
        assert isinstance(writer, DirectSlotWriter) and writer.created
    finally:
        writer.close()


def test_aligned_chunks_go_to_the_medium_without_a_copy(direct_dir, blob, monkeypatch):
    """With readinto the chunks land in page-aligned buffers: only the last, partial chunk
    passes through the staging copy; the rest is handed to O_DIRECT as it is."""
    staged = []
    stage = DirectSlotWriter._stage
    monkeypatch.setattr(
        DirectSlotWriter, "_stage", lambda self, data: staged.append(len(data)) or stage(self, data)
    )
    chunk = 64 * 1024
    with _file_source(direct_dir, blob) as src:
        write_payload(
            src.read, StandInPayload(blob), str(direct_dir / "s.img"), chunk, readinto=src.readinto
        )
    assert (direct_dir / "s.img").read_bytes() == blob
    assert staged == [len(blob) % chunk]


def test_direct_writer_takes_any_mix_of_sizes_and_buffers(direct_dir):
    """Aligned buffers, odd-sized bytes, an aligned buffer after odd bytes (staged then),
    a tail under one block: the file holds exactly the bytes written, in order."""
    import mmap

    pieces = []
    for size, aligned in ((8192, True), (100, False), (4096, True), (5000, False), (1, False)):
        data = os.urandom(size)
        if aligned:
            buf = mmap.mmap(-1, size)
            buf[:] = data
            pieces.append((memoryview(buf), data))
        else:
            pieces.append((data, data))
    target = SlotTarget(str(direct_dir / "s.img"))
    writer = target.open_writer()
    assert isinstance(writer, DirectSlotWriter)
    try:
        for piece, _ in pieces:
            writer.write(piece)
        writer.sync()
    finally:
        writer.close()
    expected = b"".join(data for _, data in pieces)
    assert writer.written == len(expected)
    assert (direct_dir / "s.img").read_bytes() == expected


def test_filesystem_refusing_o_direct_falls_back_to_buffered(tmp_path, blob, monkeypatch):
    """Stand-in for a filesystem without direct I/O (every one on this machine has it, tmpfs
    too): open(O_DIRECT) fails with EINVAL, as the kernel reports it."""
    import agent.transfer.slots

    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & agent.transfer.slots.O_DIRECT:
            real_open(
                path, flags & ~agent.transfer.slots.O_DIRECT, *args
            )  # created, as the kernel does
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(agent.transfer.slots.os, "open", refusing_open)
    target = SlotTarget(str(tmp_path / "s.img"))
    writer = target.open_writer()
    writer.close()
    assert type(writer) is SlotWriter
    assert writer.created  # the file did not exist before: its directory entry gets fsynced
    os.unlink(target.path)
    write_payload(io.BytesIO(blob).read, StandInPayload(blob), target)
    assert (tmp_path / "s.img").read_bytes() == blob


def test_chunk_buffers_are_reused_not_one_per_chunk(direct_dir, monkeypatch):
    """Memory stays flat: a 96-chunk payload goes through a handful of buffers, on the write
    side and on the read-back side alike."""
    import agent.transfer.slots

    made = {}  # id of each ChunkBuffers -> the buffers it created
    base = agent.transfer.slots.ChunkBuffers

    class Counting(base):
        def take(self):
            buf = base.take(self)
            mine = made.setdefault(id(self), [])
            if all(buf is not b for b in mine):
                mine.append(buf)
            return buf

    monkeypatch.setattr(agent.transfer.slots, "ChunkBuffers", Counting)
    data = os.urandom(96 * 32 * 1024)
    with _file_source(direct_dir, data) as src:
        write_payload(
            src.read, StandInPayload(data), str(direct_dir / "s"), 32 * 1024, readinto=src.readinto
        )
    assert (direct_dir / "s").read_bytes() == data
    pipeline, readback = made.values()  # created in this order
    # reader, hasher, writer, and two queues of QUEUE_DEPTH: never more in flight
    assert len(pipeline) <= 3 + 2 * QUEUE_DEPTH
    # reader and hasher, and a queue of DEPTH
    assert len(readback) <= 2 + agent.transfer.slots._ReadBehind.DEPTH


@pytest.fixture
def settled(monkeypatch):
    """Writeback windows of 256 KiB; the list of marks the writer hands the read-back."""
    import agent.transfer.slots

    monkeypatch.setattr(agent.transfer.slots, "WRITEBACK_WINDOW", 256 * 1024)
    marks = []
    advance = agent.transfer.slots._ReadBehind.advance
    monkeypatch.setattr(
        agent.transfer.slots._ReadBehind,
        "advance",
        lambda s, upto: marks.append(upto) or advance(s, upto),
    )
    return marks


class _SpyingTarget(SlotTarget):
    """A file slot that keeps the readers it opens, to look at them afterwards."""

    def __init__(self, path):
        SlotTarget.__init__(self, path)
        self.readers = []

    def open_reader(self):
        self.readers.append(SlotTarget.open_reader(self))
        return self.readers[-1]


def test_direct_writer_hands_windows_to_the_readback_while_writing(direct_dir, blob, settled):
    with _file_source(direct_dir, blob) as src:
        write_payload(
            src.read, StandInPayload(blob), str(direct_dir / "s"), 64 * 1024, readinto=src.readinto
        )
    assert len(settled) >= 8 and settled == sorted(settled) and settled[-1] < len(blob)


def test_direct_write_refused_by_the_medium_carries_on_buffered(direct_dir, blob, settled):
    """Fault injection: past 1 MiB the device takes half a direct write, then refuses the rest
    with EINVAL (it wants another alignment, as the kernel reports it). The writer turns
    O_DIRECT off, resumes at the right byte, and keeps pushing writeback windows to the
    read-back."""
    import fcntl

    refused = []
    writers = []

    class PickyMedium(DirectSlotWriter):
        def _os_write(self, fd, view):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and self.written >= 1 << 20:
                if not refused:
                    refused.append(self.written)
                    return os.write(fd, view[: len(view) // 2])
                raise OSError(errno.EINVAL, "Invalid argument")
            return os.write(fd, view)

    class Target(SlotTarget):
        def open_writer(self):
            writers.append(PickyMedium(self))
            return writers[-1]

    with _file_source(direct_dir, blob) as src:
        write_payload(
            src.read, StandInPayload(blob), Target(str(direct_dir / "s")), 64 * 1024,
            readinto=src.readinto,
        )  # fmt: skip
    assert refused == [1 << 20] and not writers[0].direct
    assert (direct_dir / "s").read_bytes() == blob
    assert sum(1 for upto in settled if upto > 1 << 20) >= 4  # read-back behind, buffered too


@pytest.mark.parametrize("chunk", [1000, 4096, 64 * 1024 + 512, 1 << 20])
def test_any_chunk_size_round_trips_through_the_direct_path(direct_dir, blob, chunk):
    """Chunk sizes that are not whole blocks go through staging on the write side and
    rounded-up reads on the read-back side; the slot and its read-back stay byte-exact."""
    with _file_source(direct_dir, blob) as src:
        write_payload(
            src.read, StandInPayload(blob), str(direct_dir / "s"), chunk, readinto=src.readinto
        )
    assert (direct_dir / "s").read_bytes() == blob


def test_readback_reads_the_medium_with_o_direct(direct_dir, blob):
    target = _SpyingTarget(str(direct_dir / "s"))
    with _file_source(direct_dir, blob) as src:
        write_payload(src.read, StandInPayload(blob), target, readinto=src.readinto)
    assert len(target.readers) == 1 and target.readers[0].direct


def test_readback_refused_o_direct_carries_on_buffered(direct_dir, blob, monkeypatch):
    """Fault injection: the device refuses every direct read with EINVAL (another
    alignment); the reader turns O_DIRECT off and the read-back still compares every byte."""
    import fcntl

    import agent.transfer.slots

    refused = []
    real_readv = os.readv

    def picky_readv(fd, buffers):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_readv(fd, buffers)

    monkeypatch.setattr(agent.transfer.slots.os, "readv", picky_readv)
    target = _SpyingTarget(str(direct_dir / "s"))
    with _file_source(direct_dir, blob) as src:
        write_payload(src.read, StandInPayload(blob), target, readinto=src.readinto)
    assert len(refused) == 1 and not target.readers[0].direct


def test_corrupting_medium_is_caught_by_the_direct_readback(direct_dir, blob):
    class BadMedium(SlotTarget):
        def open_reader(self):
            reader = _CorruptingReader(self.path)
            assert reader.direct
            return reader

    with _file_source(direct_dir, blob) as src:
        with pytest.raises(ReadbackMismatch):
            write_payload(
                src.read, StandInPayload(blob), BadMedium(str(direct_dir / "s")),
                readinto=src.readinto,
            )  # fmt: skip


@pytest.fixture
def loop_device(tmp_path):
    """A real block device: a loop device over a 16 MiB image (needs root and losetup)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("a loop device needs root and losetup")
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xee" * (16 << 20))
    out = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("losetup: %s" % out.stderr.strip())
    device = out.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_device_slot_written_direct_and_read_back(loop_device, tmp_path, blob):
    """A real block device: sized by ioctl, never truncated, written with O_DIRECT (the
    last partial block through the page cache), read back; bytes after the payload stay."""
    target = SlotTarget(loop_device)
    assert target.is_block and target.capacity() == 16 << 20
    probe = target.open_writer()  # opening a device neither truncates nor writes it
    probe.close()
    assert isinstance(probe, DirectSlotWriter) and not probe.created
    with _file_source(tmp_path, blob) as src:
        write_payload(src.read, StandInPayload(blob), target, readinto=src.readinto)
    with open(loop_device, "rb") as f:
        data = f.read()
    assert data[: len(blob)] == blob
    assert data[len(blob) :] == b"\xee" * ((16 << 20) - len(blob))


def test_disk_full_in_staged_data_is_no_space_and_closes_the_slot(direct_dir, blob):
    """A gzip payload (written through the staging buffer): past 1 MiB the medium takes half
    a write, then reports ENOSPC. The operator gets NoSpace, and no descriptor stays open."""

    class FullDisk(DirectSlotWriter):
        short = False

        def _os_write(self, fd, view):
            if self.written + len(view) > 1 << 20:
                if not self.short:
                    self.short = True
                    return os.write(fd, view[: len(view) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, view)

    class FillingTarget(SlotTarget):
        def open_writer(self):
            return FullDisk(self)

    stored = gzip.compress(blob, compresslevel=1)
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(NoSpace) as info:
        write_payload(
            io.BytesIO(stored).read, StandInPayload(stored, blob, compression="gzip"),
            FillingTarget(str(direct_dir / "s")),
        )  # fmt: skip
    assert "is full after" in str(info.value)
    assert set(os.listdir("/proc/self/fd")) == fds_before
