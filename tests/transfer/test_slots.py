"""write_payload into real file slots, with faults injected at the source and the medium."""

import errno
import gzip
import hashlib
import io
import os

import pytest

from agent.core.errors import NoSpace, PayloadMismatch, ReadbackMismatch, Truncated
from agent.slots import SlotReader, SlotTarget, SlotWriter, check_space, device_size, write_payload
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


def test_disk_full_during_write_is_no_space(tmp_path, blob):
    """Fault injection: the medium fills up after 1 MiB (ENOSPC from write(2))."""

    class FullDisk(SlotWriter):
        def _os_write(self, fd, view):
            if self.written + len(view) > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, view)

    class FillingTarget(SlotTarget):
        def open_writer(self):
            return FullDisk(self)

    with pytest.raises(NoSpace) as info:
        write_payload(
            io.BytesIO(blob).read, StandInPayload(blob), FillingTarget(str(tmp_path / "s"))
        )
    assert "full after 1048576 bytes" in str(info.value)


class _CorruptingReader(SlotReader):
    """Fault injection: the medium returns one flipped bit on read-back."""

    def __init__(self, path):
        SlotReader.__init__(self, path)
        self.flipped = False

    def read(self, n):
        data = SlotReader.read(self, n)
        if data and not self.flipped:
            self.flipped = True
            data = bytes([data[0] ^ 0x80]) + data[1:]
        return data


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
                os.ftruncate(writer.fd, len(blob) - 100)  # acknowledged, then lost
                real()

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
    import agent.slots

    if agent.slots._sync_file_range is None:
        pytest.skip("no sync_file_range on this platform")
    monkeypatch.setattr(agent.slots, "WRITEBACK_WINDOW", 256 * 1024)


def test_readback_behind_the_writer_happens_during_the_write(
    tmp_path, blob, small_windows, monkeypatch
):
    import agent.slots

    marks = []
    advance = agent.slots._ReadBehind.advance
    monkeypatch.setattr(
        agent.slots._ReadBehind,
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
