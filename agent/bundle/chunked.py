"""Format-2 payloads: an image cut into fixed blocks, each stored as its own zstd unit, the
blocks' ids grouped by content, and the two-level chunk index that names them (the layout:
agent/core/chunkindex.py). The stored payload is the group details, then the units.

Each block is compressed with the `window` bytes of the image before it as a raw-content
dictionary: an installer that rebuilds the image in order always has those bytes (it just
wrote them), so a unit fetched on its own by an HTTP Range request compresses nearly as
well as the whole stream would. Zero blocks store nothing. Why zstd with a prefix and 4 KiB
blocks: docs/bundle-format.md (measured).

Invariant: a reader never produces more than the index allows: a unit inflates to at most
its block's length (a unit claiming more is refused at that bound, whatever its frame
header says), and an index inflates to at most what its payload's size can need.
"""

import collections
import concurrent.futures
import hashlib
import io
import os
import struct

import zstandard

from agent.core import chunkindex as ci
from agent.core.errors import ConfigError, MalformedBundle, PayloadMismatch

BLOCK = 4096
WINDOW = 64 * 1024
LEVEL = 19
BATCH = 256  # blocks compressed per round of the thread pool


def _prefix_dict(prefix):
    return zstandard.ZstdCompressionDict(bytes(prefix), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _compress(data, prefix, level):
    c = zstandard.ZstdCompressor(
        level=level, dict_data=_prefix_dict(prefix) if prefix else None,
        write_content_size=False, write_checksum=False, write_dict_id=False,
    )  # fmt: skip
    out = c.compress(data)
    return out if len(out) < len(data) else bytes(data)  # stored raw when zstd does not help


def inflate_unit(unit, length, prefix):
    """A block's bytes from its stored unit (raw when it is as long as the block), never more
    than `length`; PayloadMismatch if it does not inflate to exactly that."""
    if len(unit) == length:
        return bytes(unit)
    dctx = zstandard.ZstdDecompressor(dict_data=_prefix_dict(prefix) if prefix else None)
    try:
        reader = dctx.stream_reader(io.BytesIO(unit), read_across_frames=False)
        out = reader.read(length + 1)
    except zstandard.ZstdError as e:
        raise PayloadMismatch("corrupt chunk: %s" % e) from None
    if len(out) != length:
        raise PayloadMismatch("chunk inflates to %d bytes, its block has %d" % (len(out), length))
    return out


def pack(src_path, out_file, block_size=BLOCK, window=WINDOW, level=LEVEL, threads=None,
         modulus=ci.MODULUS):  # fmt: skip
    """Write src_path's stored payload (group details, then units) to the seekable out_file.
    Returns (stored top index, stored size, stored sha256, installed size, installed sha256)."""
    try:
        src = open(src_path, "rb")
    except OSError as e:
        raise ConfigError("cannot read payload %s: %s" % (src_path, e.strerror)) from None
    with src:
        count = -(-os.fstat(src.fileno()).st_size // block_size)
        start = out_file.tell()
        out_file.write(bytes(ci.detail_size(count)))  # the details, once the blocks are known
        ids, lengths, size, installed = _pack_units(src, out_file, block_size, window, level,
                                                    threads)  # fmt: skip
    if len(ids) != count:
        raise ConfigError("payload %s changed while it was packed" % src_path)
    most = 4 * modulus
    groups, details = [], []
    for first, n in ci.groups(ids, ci.block_id(bytes(block_size)), modulus, most):
        members = ids[first : first + n]
        units = lengths[first : first + n]
        groups.append((n, sum(units), ci.group_id(members)))
        details.append(b"".join(i.to_bytes(ci.ID_SIZE, "big") for i in members))
        details.append(struct.pack(">%dH" % n, *units))
    end = out_file.tell()
    out_file.seek(start)
    out_file.write(b"".join(details))
    out_file.seek(end)
    out_file.flush()
    stored_size, stored_sha = _hash_range(out_file, start, end)
    raw = ci.encode_index(block_size, window, size, modulus, most, groups)
    packed = zstandard.ZstdCompressor(level=19).compress(raw)
    return packed, stored_size, stored_sha, size, installed.hexdigest()


def _hash_range(f, start, end):
    digest = hashlib.sha256()
    fd = f.fileno()
    pos = start
    while pos < end:
        data = os.pread(fd, min(1 << 20, end - pos), pos)
        if not data:
            raise ConfigError("staged payload ends early")
        digest.update(data)
        pos += len(data)
    return end - start, digest.hexdigest()


def _pack_units(src, out_file, block_size, window, level, threads):
    """Every block's unit written to out_file in order: (ids, unit lengths, installed size,
    installed sha256 object)."""
    ids, lengths = [], []
    zero = bytes(block_size)
    installed = hashlib.sha256()
    size = 0
    history = b""
    pool = concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1)
    with pool:
        while True:
            data = src.read(block_size * BATCH)
            if not data:
                break
            installed.update(data)
            size += len(data)
            buf = history + data
            base = len(history)
            jobs = []
            for off in range(0, len(data), block_size):
                block = data[off : off + block_size]
                ids.append(ci.block_id(block))
                if block == zero:
                    jobs.append(None)  # nothing stored: the installer writes zeros
                    continue
                start = base + off
                prefix = buf[max(0, start - window) : start]
                jobs.append(pool.submit(_compress, block, prefix, level))
            for job in jobs:
                unit = job.result() if job is not None else b""
                lengths.append(len(unit))
                out_file.write(unit)
            history = buf[-window:] if window else b""
    return ids, lengths, size, installed


def read_index(stored, payload):
    """The stored top index of `payload` (checked against the manifest's sha256 here) ->
    ChunkIndex. Inflating stops at the most a payload of this size can need."""
    if hashlib.sha256(stored).hexdigest() != payload.index["sha256"]:
        raise MalformedBundle(
            "chunk index of payload %s does not match its signed sha256" % payload.name,
            hint="the bundle was altered or damaged; download it again",
        )
    limit = ci.max_raw_size(payload.installed_size)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(stored), read_across_frames=False
        )
        raw = reader.read(limit + 1)
    except zstandard.ZstdError as e:
        raise MalformedBundle("chunk index of %s is corrupt: %s" % (payload.name, e)) from None
    if len(raw) > limit:
        raise MalformedBundle("chunk index of %s inflates beyond its bound" % payload.name)
    return ci.parse_index(raw, payload)


class Rebuilder:
    """Rebuilds a payload's image block by block, in order: a block is taken only if its id
    is the one the signed index names (`check`), and a stored unit is inflated with the
    window of image bytes before it (`from_unit`). The installed sha256 of everything
    taken is compared with the manifest by `finish`."""

    def __init__(self, payload, index):
        self.payload = payload
        self.index = index
        # The last blocks taken, joined into the window only when a unit needs it: most
        # blocks of a delta install come from a slot and never need it.
        self.recent = collections.deque(maxlen=-(-index.window // index.block_size) + 1)
        self.digest = hashlib.sha256()
        self.taken = 0
        self.zero = bytes(index.block_size)

    @property
    def history(self):
        window = self.index.window
        return b"".join(self.recent)[-window:] if window else b""

    def check(self, i, block, bid=None):
        """True if `block` is block i of the image (its id, or `bid` computed already,
        matches the index)."""
        if len(block) != self.index.block_length(i):
            return False
        if bid is None:
            bid = self.index.zero_id if block is self.zero else ci.block_id(block)
        return bid == self.index.ids[i]

    def take(self, i, block):
        """Accept block i (already checked) as the next piece of the image."""
        if i != self.taken:
            raise PayloadMismatch("block %d rebuilt out of order (next is %d)" % (i, self.taken))
        self.digest.update(block)
        self.recent.append(block)
        self.taken += 1
        return block

    def from_unit(self, i, unit):
        """Block i from its stored unit, checked; PayloadMismatch names the block if not."""
        n = self.index.block_length(i)
        block = self.zero if self.index.lengths[i] == 0 else inflate_unit(unit, n, self.history)
        if not self.check(i, block):
            raise PayloadMismatch(
                "payload %s: block %d does not match the signed chunk index"
                % (self.payload.name, i),
                hint="the server sent other bytes than the bundle's; the slot was not marked "
                "bootable",
            )
        return self.take(i, block)

    def finish(self):
        sha = self.digest.hexdigest()
        if self.taken != self.index.count or sha != self.payload.installed_sha256:
            raise PayloadMismatch(
                "payload %s rebuilt with sha256 %s, the manifest says %s"
                % (self.payload.name, self.digest.hexdigest(), self.payload.installed_sha256),
                hint="the slot was not marked bootable",
            )


def stream_blocks(read_exact, payload, index):
    """The image's blocks from its stored payload read in order (a full download): every
    group detail checked against its id, every block against the index, the stored sha256
    and the installed sha256 at the end. `read_exact(n)` returns exactly n bytes or raises."""
    rebuild = Rebuilder(payload, index)
    stored = hashlib.sha256()
    for g in range(len(index.groups)):
        detail = read_exact(index.detail_span(g)[1])
        stored.update(detail)
        index.take_detail(g, detail)
    for i, n in enumerate(index.lengths):
        unit = read_exact(n) if n else b""
        stored.update(unit)
        yield rebuild.from_unit(i, unit)
    if stored.hexdigest() != payload.sha256:
        raise PayloadMismatch("payload %s: sha256 of its units does not match" % payload.name)
    rebuild.finish()
