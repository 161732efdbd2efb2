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
import hashlib
import io
import os
import struct

from agent.core import chunkindex as ci
from agent.core.errors import ConfigError, MalformedBundle, PayloadMismatch

BLOCK = 4096
# Image bytes before a block that prime its unit: 256 KiB fetch 5% fewer bytes than 64 KiB
# for 5x the packing time, 1 MiB 2.5% fewer again for 20x (docs/bundle-format.md).
WINDOW = 256 * 1024
LEVEL = 19
BATCH = 256  # blocks compressed per round of the thread pool
# zstandard is imported by the functions that use it, not here: a format-1 install passes
# through this module and never needs it (3 ms of its start-up, docs/transfer.md).


def _prefix_dict(prefix):
    import zstandard

    return zstandard.ZstdCompressionDict(bytes(prefix), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _compress(data, prefix, level):
    # Without the frame's magic number (4 bytes of every unit): a unit is known to be a zstd
    # frame by its length, so the magic would only say it again.
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(data), dict_size=len(prefix),
        format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=0, write_checksum=0,
        write_dict_id=0,
    )  # fmt: skip
    c = zstandard.ZstdCompressor(
        compression_params=params, dict_data=_prefix_dict(prefix) if prefix else None
    )
    out = c.compress(data)
    return out if len(out) < len(data) else bytes(data)  # stored raw when zstd does not help


def inflate_unit(unit, length, prefix):
    """A block's bytes from its stored unit (raw when it is as long as the block), never more
    than `length`; PayloadMismatch if it does not inflate to exactly that."""
    if len(unit) == length:
        return bytes(unit)
    import zstandard

    dctx = zstandard.ZstdDecompressor(
        dict_data=_prefix_dict(prefix) if prefix else None,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
    )
    try:
        reader = dctx.stream_reader(io.BytesIO(unit), read_across_frames=False)
        out = reader.read(length + 1)
    except zstandard.ZstdError as e:
        raise PayloadMismatch("corrupt chunk: %s" % e) from None
    if len(out) != length:
        raise PayloadMismatch("chunk inflates to %d bytes, its block has %d" % (len(out), length))
    return out


def pack(src_path, out_file, block_size=BLOCK, window=WINDOW, level=LEVEL, threads=None,
         modulus=ci.MODULUS, bases=()):  # fmt: skip
    """Write src_path's stored payload (group details, then units, then the front for the
    images `bases`: earlier releases chargers run) to the seekable out_file. Returns (stored
    top index, stored size, stored sha256, installed size, installed sha256)."""
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
    zero = ci.block_id(bytes(block_size))
    cut = ci.groups(ids, zero, modulus, most)
    groups, details = [], []
    for first, n in cut:
        members = ids[first : first + n]
        units = lengths[first : first + n]
        groups.append((n, sum(units), ci.group_id(members)))
        details.append(struct.pack(">%dI" % n, *[ci.short_id(b) for b in members]))
        details.append(struct.pack(">%dH" % n, *units))
    end = out_file.tell()
    out_file.seek(start)
    out_file.write(b"".join(details))
    out_file.seek(end)
    frames = _front(src_path, out_file, ids, cut, bases, block_size, window, level, threads,
                    modulus, most)  # fmt: skip
    end = out_file.tell()
    out_file.flush()
    stored_size, stored_sha = _hash_range(out_file, start, end)
    raw = ci.encode_index(block_size, window, size, modulus, most, groups, frames)
    import zstandard

    packed = zstandard.ZstdCompressor(level=19).compress(raw)
    return packed, stored_size, stored_sha, size, installed.hexdigest()


def _base_ids(path, block_size, modulus, most):
    """(block ids, group ids) of an earlier release's image."""
    ids = []
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(block_size), b""):
                ids.append(ci.block_id(block))
    except OSError as e:
        raise ConfigError("cannot read delta base %s: %s" % (path, e.strerror)) from None
    zero = ci.block_id(bytes(block_size))
    groups = set(ci.group_id(ids[a : a + n]) for a, n in ci.groups(ids, zero, modulus, most))
    return set(ids), groups


def _front(src_path, out_file, ids, cut, bases, block_size, window, level, threads, modulus,
           most):  # fmt: skip
    """Write the front for `bases` (entries, then frames; agent/core/chunkindex.py) and
    return {group with an entry: its frame's bytes, 0 for none}. A group has an entry if some
    base lacks it; a block is hot if some base lacks it and no earlier hot block of the
    image has its bytes (a charger fetches those once, docs/bundle-format.md); a group with
    a hot block has a frame."""
    if not bases:
        return {}
    known = [_base_ids(path, block_size, modulus, most) for path in bases]
    zero = ci.block_id(bytes(block_size))
    seen = set()
    hot_groups = []  # (group, first, n, [hot block indexes])
    for g, (first, n) in enumerate(cut):
        gid = ci.group_id(ids[first : first + n])
        if all(gid in groups for _, groups in known):
            continue
        hot = []
        for i in range(first, first + n):
            bid = ids[i]
            if bid == zero or bid in seen or all(bid in blocks for blocks, _ in known):
                continue
            seen.add(bid)
            hot.append(i)
        hot_groups.append((g, first, n, hot))
    for _g, first, n, hot in hot_groups:
        bits = bytearray((n + 7) // 8)
        for i in hot:
            bits[(i - first) // 8] |= 1 << ((i - first) % 8)
        shorts = struct.pack(">%dI" % n, *[ci.short_id(b) for b in ids[first : first + n]])
        out_file.write(shorts + bytes(bits))
    import concurrent.futures

    with open(src_path, "rb") as src:
        fd = src.fileno()

        def frame(item):
            hot = item[3]
            if not hot:
                return b""
            at = hot[0] * block_size
            data = b"".join(os.pread(fd, block_size, i * block_size) for i in hot)
            prefix = os.pread(fd, min(window, at), at - min(window, at)) if window else b""
            return _compress(data, prefix, level)

        pool = concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1)
        with pool:
            frames = list(pool.map(frame, hot_groups))
    for data in frames:
        out_file.write(data)
    return dict((item[0], len(data)) for item, data in zip(hot_groups, frames))


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
    import concurrent.futures

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
    import zstandard

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


class GroupMismatch(PayloadMismatch):
    """Blocks taken for a group do not make its signed group id (or one of its units does
    not inflate to its short id): none of them was written. The installer fetches the
    group's detail and units again; a full download has nothing else to try."""

    def __init__(self, message, group, hint=None):
        PayloadMismatch.__init__(self, message, hint)
        self.group = group


class Rebuilder:
    """Rebuilds a payload's image group by group, in order: a block is taken only if its id
    is the one the index names (`check`: its 8-byte id when known, else its short id), a
    stored unit is inflated with the window of image bytes before it (`from_unit`), and a
    group's blocks are handed out only once their 8-byte ids make its signed group id
    (`end_group`): nothing unchecked reaches the slot. The installed sha256 of everything
    handed out is compared with the manifest by `finish`."""

    def __init__(self, payload, index):
        self.payload = payload
        self.index = index
        # The last blocks taken, joined into the window only when a unit needs it: most
        # blocks of a delta install come from a slot and never need it.
        self.recent = collections.deque((), -(-index.window // index.block_size))
        self.digest = hashlib.sha256()
        self.taken = 0  # blocks handed out (whole groups)
        self.next = 0  # the next block to take (within the current group)
        self.pending = []  # (block, 8-byte id) of the current group
        self.before = []  # `recent` when the current group began, to go back to
        self.zero = bytes(index.block_size)

    @property
    def history(self):
        window = self.index.window
        if not window:
            return b""
        data = b"".join(self.recent)  # only a window that is no whole number of blocks is cut
        return data if len(data) <= window else data[-window:]

    def check(self, i, block):
        """Block i's 8-byte id if `block` is block i of the image (its id, or its short id
        while only that is known, matches the index), else None."""
        index = self.index
        if len(block) != index.block_length(i):
            return None
        bid = index.zero_id if block is self.zero else ci.block_id(block)
        if index.ids[i] is not None:
            return bid if bid == index.ids[i] else None
        return bid if ci.short_id(bid) == index.short[i] else None

    def take(self, i, block, bid):
        """Block i (checked: `bid` is what check returned) as the next piece of its group."""
        if i != self.next:
            raise PayloadMismatch("block %d rebuilt out of order (next is %d)" % (i, self.next))
        if not self.pending:
            self.before = list(self.recent)
        self.pending.append((block, bid))
        self.recent.append(block)
        self.next += 1

    def from_unit(self, i, unit, group=None):
        """Take block i from its stored unit; PayloadMismatch names the block if it does not
        match (GroupMismatch when `group` is given: earlier blocks of that group, not yet
        checked as a group, may have been wrong and spoilt its dictionary)."""
        n = self.index.block_length(i)
        what = "payload %s: block %d does not match the signed chunk index" % (self.payload.name, i)
        try:
            block = self.zero if self.index.lengths[i] == 0 else inflate_unit(unit, n, self.history)
        except PayloadMismatch as e:
            what = "%s (%s)" % (what, e.message)
            block = None
        bid = self.check(i, block) if block is not None else None
        if bid is None:
            if group is not None:
                raise GroupMismatch(what, group)
            raise PayloadMismatch(what, hint=_LIAR)
        self.take(i, block, bid)

    def from_frame(self, g, frame):
        """Group g's hot blocks ({block: bytes}, not yet checked or taken) from its front
        frame, inflated with the window before its first hot block: call it when that block
        is the next to take. GroupMismatch if the frame does not inflate to their length."""
        hot = self.index.hot[g]
        if self.next != hot[0]:
            raise PayloadMismatch("group %d frame opened at block %d, not %d" % (g, self.next,
                                  hot[0]))  # fmt: skip
        total = sum(self.index.block_length(i) for i in hot)
        try:
            data = inflate_unit(frame, total, self.history)
        except PayloadMismatch as e:
            raise GroupMismatch("payload %s: the frame of group %d does not match the signed "
                                "chunk index (%s)" % (self.payload.name, g, e.message), g,
                                hint=_LIAR) from None  # fmt: skip
        out, pos = {}, 0
        for i in hot:
            n = self.index.block_length(i)
            out[i] = data[pos : pos + n]
            pos += n
        return out

    def restart_group(self, g):
        """Drop what was taken of group g so far (a GroupMismatch before its end): the
        window goes back to the group's start, to rebuild it from its units."""
        if self.pending:
            self.recent = collections.deque(self.before, self.recent.maxlen)
        self.pending = []
        self.next = self.index.groups[g][0]

    def end_group(self, g):
        """The blocks of group g (all taken), if their ids make its signed id; else none is
        handed out, the window goes back to the group's start, and GroupMismatch."""
        first, n = self.index.groups[g][:2]
        pending, self.pending = self.pending, []
        if self.next != first + n or len(pending) != n or self.taken != first:
            raise PayloadMismatch("group %d rebuilt out of order" % g)
        if not self.index.matches(g, [bid for _, bid in pending]):
            self.recent = collections.deque(self.before, self.recent.maxlen)
            self.next = first
            raise GroupMismatch("payload %s: the blocks of group %d do not match the signed "
                                "chunk index" % (self.payload.name, g), g, hint=_LIAR)  # fmt: skip
        blocks = [block for block, _ in pending]
        for block in blocks:
            self.digest.update(block)
        self.taken += n
        return blocks

    def finish(self):
        sha = self.digest.hexdigest()
        if self.taken != self.index.count or sha != self.payload.installed_sha256:
            raise PayloadMismatch(
                "payload %s rebuilt with sha256 %s, the manifest says %s"
                % (self.payload.name, self.digest.hexdigest(), self.payload.installed_sha256),
                hint="the slot was not marked bootable",
            )


_LIAR = "the server sent other bytes than the bundle's; the slot was not marked bootable"


def stream_blocks(read_exact, payload, index):
    """The image's blocks from its stored payload read in order (a full download): every
    block checked against its short id, every group against its signed id before its
    blocks are handed out, the stored sha256 and the installed sha256 at the end. The
    front (for delta installs only) is read and hashed, never used. `read_exact(n)` returns
    exactly n bytes or raises."""
    rebuild = Rebuilder(payload, index)
    stored = hashlib.sha256()
    for g in range(len(index.groups)):
        detail = read_exact(index.detail_span(g)[1])
        stored.update(detail)
        index.take_detail(g, detail)
    for g, (first, n) in enumerate((x[0], x[1]) for x in index.groups):
        for i in range(first, first + n):
            unit = read_exact(index.lengths[i]) if index.lengths[i] else b""
            stored.update(unit)
            rebuild.from_unit(i, unit)
        yield from rebuild.end_group(g)
    left = index.front_size
    while left:
        data = read_exact(min(left, 1 << 20))
        stored.update(data)
        left -= len(data)
    if stored.hexdigest() != payload.sha256:
        raise PayloadMismatch("payload %s: sha256 of its units does not match" % payload.name)
    rebuild.finish()
