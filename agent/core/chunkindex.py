"""The chunk index of a format-2 payload, in two levels: groups of blocks named in the bundle's
head, the blocks of each group in the payload, fetched only for groups a charger lacks.

The image is cut into fixed blocks, the blocks into content-defined groups: a group ends
after a block whose id is a multiple of the modulus M (never a zero block), or at X blocks.
A charger cuts its own slots by the same rule, so a group it already has is recognised by
its id alone, wherever the group moved to; only the other groups' block lists are fetched.

Top index (the bundle's head; zstd-compressed, its sha256 signed in the manifest; integers
big-endian):

    8 bytes   magic b"CUIDX4\\n\\0" (b"CUIDX3\\n\\0": the same without front frames)
    4 bytes   block size B (512..32768, a power of two)
    4 bytes   window W: bytes of the image before a block that prime its decompression
    8 bytes   installed size S (the payload's installed_size)
    4 bytes   block count N = ceil(S / B)
    4 bytes   group count G
    4 bytes   modulus M (a group's average length in blocks)
    4 bytes   most blocks in a group X
    G times   varint block count, varint stored bytes of the group's units, (CUIDX4 only)
              varint front: 0 none, else 1 + the bytes of its frame; 8-byte group id

Group detail (the first 6 * N bytes of the stored payload, group after group): for each
block of the group the first 4 bytes of its id (its short id), then for each block its
2-byte unit length (0: nothing stored, the block is all zeros; the block's length: stored
raw; less: a zstd frame without its magic number, with the W image bytes before the block
as its dictionary). The units follow, block after block.

The front (CUIDX4, after the units): what a charger running a release the packer was told
of (`--delta-base`) lacks, in one place. For each group such a release lacks, in order, its
entry: its blocks' short ids (4 bytes each), then a bitmap of its hot blocks (ceil(n / 8)
bytes, block j is bit j % 8 of byte j // 8), the blocks such a release lacks (none: the
group only moved or was cut anew); then every frame, in group order: a group's hot blocks'
bytes joined, as one zstd frame (magicless) with the W image bytes before its first hot
block as its dictionary, or raw when zstd does not shrink them. A charger that lacks a
group with an entry fetches the entry instead of the detail, and the frame only if it lacks
at least half of the hot blocks (agent/transfer/adaptive.py); its other blocks come from
its slots or the units.

A block id is the first 8 bytes of the block's SHA-256; a group id the first 8 bytes of the
SHA-256 of its blocks' (8-byte) ids. A detail (or an entry) names short ids only (4 bytes a
block instead of 8: the block lists are most of what a delta fetches besides the units), so
it cannot be checked against its group id alone: each block is checked against its short
id, and a group's blocks against the signed group id, before any of them is written
(agent/bundle/chunked.py, Rebuilder).

Invariant: a ChunkIndex exists only if every field is in range and consistent with the
payload it belongs to (sizes, counts, stored bytes adding up to the payload's size), and a
detail is taken only if its lengths add up to its group's signed stored bytes and each is
in its block's bounds, so the installer can plan from it without further checks. Pure: no
I/O, runs on MicroPython.
"""

import hashlib
import struct

from agent.core.errors import MalformedBundle

MAGIC = b"CUIDX4\n\0"
MAGIC3 = b"CUIDX3\n\0"  # no front frames (bundles packed before them): still read
HEAD = ">8sIIQIIII"
HEAD_SIZE = 40
ID_SIZE = 8
SHORT_SIZE = 4  # a block's id in a group detail: its first 4 bytes
SHORT_SHIFT = 8 * (ID_SIZE - SHORT_SIZE)
ENTRY = SHORT_SIZE + 2  # one block in a group detail: short id, unit length
MIN_BLOCK = 512
MAX_BLOCK = 32768
MAX_WINDOW = 1 << 20
MAX_COUNT = 1 << 26  # 64 Mi blocks: 256 GiB of 4 KiB blocks; bounds the parser's memory
MAX_GROUP = 1 << 16  # blocks in one group
MODULUS = 16  # groups of 16 blocks on average: fewest bytes to fetch, measured (bundle-format.md)


def block_id(data):
    """The id of a block: the first ID_SIZE bytes of its SHA-256, as an int."""
    return int.from_bytes(hashlib.sha256(data).digest()[:ID_SIZE], "big")


def short_id(bid):
    """A block id's first SHORT_SIZE bytes, as an int (what a group detail names)."""
    return bid >> SHORT_SHIFT


def group_id(ids):
    """The id of a group of blocks, from their ids."""
    h = hashlib.sha256()
    for bid in ids:
        h.update(bid.to_bytes(ID_SIZE, "big"))
    return int.from_bytes(h.digest()[:ID_SIZE], "big")


def groups(ids, zero_id, modulus, most):
    """[(first block, block count)] of the id sequence `ids`, cut by the group rule."""
    out = []
    start = 0
    for i, bid in enumerate(ids):
        if (bid != zero_id and bid % modulus == 0) or i + 1 - start >= most:
            out.append((start, i + 1 - start))
            start = i + 1
    if start < len(ids):
        out.append((start, len(ids) - start))
    return out


def max_raw_size(installed_size):
    """Upper bound of a top index's uncompressed size for a payload (bounds its inflating)."""
    count = min(installed_size // MIN_BLOCK + 1, MAX_COUNT)
    return HEAD_SIZE + count * (ID_SIZE + 3 + 5 + 5)  # per group at most: id, three varints


def detail_size(count):
    return count * ENTRY


def entry_size(n):
    """Bytes of a front entry of a group of n blocks: short ids, then the hot bitmap."""
    return n * SHORT_SIZE + (n + 7) // 8


class ChunkIndex:
    """Groups from the top index; block ids and unit lengths once a group is known (None
    before). Unit offsets are relative to the first unit, after the group details."""

    def __init__(self, block_size, window, installed_size, count, modulus, most, groups,
                 frames=None):  # fmt: skip
        self.block_size = block_size
        self.window = window
        self.installed_size = installed_size
        self.count = count
        self.modulus = modulus
        self.most = most
        self.groups = groups  # [(first block, block count, unit offset, stored bytes, id)]
        self.zero_id = block_id(bytes(block_size))
        self.zero_short = short_id(self.zero_id)
        self.ids = [None] * count  # full ids, of groups taken whole from a slot
        self.short = [None] * count  # short ids, from a detail or a slot
        self.lengths = [None] * count
        self.offsets = [None] * count
        last = groups[-1] if groups else (0, 0, 0, 0, 0)
        self.stored_size = last[2] + last[3]
        self.detail_size = detail_size(count)
        self.starts = [g[0] for g in groups]  # for group_of
        # Front: {group: (entry offset, entry bytes, frame offset, frame bytes (0: none))},
        # offsets in the stored payload; the hot blocks of a group once its entry was taken.
        self.front = {}
        self.hot = {}
        frames = frames or {}
        entry_at = self.detail_size + self.stored_size  # the entries, then the frames
        frame_at = entry_at + sum(entry_size(groups[g][1]) for g in frames)
        for g in sorted(frames):
            n = entry_size(groups[g][1])
            self.front[g] = (entry_at, n, frame_at, frames[g])
            entry_at, frame_at = entry_at + n, frame_at + frames[g]
        self.front_size = frame_at - self.detail_size - self.stored_size

    def block_length(self, i):
        if i == self.count - 1:
            return self.installed_size - i * self.block_size
        return self.block_size

    def group_of(self, i):
        """The index of the group block i belongs to (binary search)."""
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def detail_span(self, g):
        """(offset in the stored payload, length) of group g's detail."""
        first, n = self.groups[g][0], self.groups[g][1]
        return first * ENTRY, n * ENTRY

    def matches(self, g, ids):
        """True if `ids` (8-byte block ids, in order) are group g's: its signed id."""
        n, gid = self.groups[g][1], self.groups[g][4]
        return len(ids) == n and group_id(ids) == gid

    def take_ids(self, g, ids, lengths=None):
        """The blocks of group g are `ids` (the charger's own, already matched): True if
        they hash to the group's signed id. Unit lengths stay unknown unless given (an
        all-zero group stores nothing)."""
        first, n, offset = self.groups[g][:3]
        if not self.matches(g, ids):
            return False
        for j in range(n):
            self.ids[first + j] = ids[j]
            self.short[first + j] = short_id(ids[j])
            if lengths is not None:
                self.lengths[first + j], self.offsets[first + j] = lengths[j], offset
                offset += lengths[j]
        return True

    def take_entry(self, g, data):
        """Group g's front entry: its short ids and hot blocks, checked for shape (the short
        ids with the blocks they name, by the group's signed id); MalformedBundle if not."""
        first, n = self.groups[g][:2]
        data = bytes(data)
        if g not in self.front or len(data) != entry_size(n):
            raise _bad("group %d front entry is %d bytes" % (g, len(data)))
        shorts = struct.unpack(">%dI" % n, data[: n * SHORT_SIZE])
        bits = data[n * SHORT_SIZE :]
        hot = [first + j for j in range(n) if bits[j // 8] >> (j % 8) & 1]
        if any(b >> (n - 8 * k) for k, b in enumerate(bits) if 8 * k + 8 > n):
            raise _bad("group %d front entry names a hot block past its end" % g)
        if bool(hot) != bool(self.front[g][3]):
            raise _bad("group %d front entry names %d hot blocks for a %d-byte frame"
                       % (g, len(hot), self.front[g][3]))  # fmt: skip
        if sum(self.block_length(i) for i in hot) < self.front[g][3]:
            raise _bad("group %d frame is longer than its hot blocks" % g)
        for j in range(n):
            self.short[first + j] = shorts[j]
        self.hot[g] = hot

    def take_detail(self, g, data):
        """Group g's detail (ENTRY bytes per block), checked against its signed stored size
        and its blocks' bounds; MalformedBundle if it does not fit. Its short ids are
        checked later, with the blocks they name (Rebuilder.end_group)."""
        first, n, offset, stored = self.groups[g][:4]
        data = bytes(data)
        if len(data) != n * ENTRY:
            raise _bad("group %d detail is %d bytes, not %d" % (g, len(data), n * ENTRY))
        ids = struct.unpack(">%dI" % n, data[: n * SHORT_SIZE])
        lengths = struct.unpack(">%dH" % n, data[n * SHORT_SIZE :])
        if sum(lengths) != stored:
            raise _bad("group %d detail stores %d bytes, its entry says %d" % (g, sum(lengths),
                       stored))  # fmt: skip
        pos = offset
        for j in range(n):
            i = first + j
            _check_unit(self, i, ids[j], lengths[j])
            self.short[i], self.lengths[i], self.offsets[i] = ids[j], lengths[j], pos
            pos += lengths[j]


def _bad(what):
    return MalformedBundle("chunk index " + what, hint="the bundle is damaged; download it again")


def _check_unit(index, i, short, n):
    """A block has a unit no longer than itself, or none and the zero block's short id."""
    if n > index.block_length(i):
        raise _bad("block %d stores %d bytes, more than its %d" % (i, n, index.block_length(i)))
    if n == 0 and (short != index.zero_short or index.block_length(i) != index.block_size):
        raise _bad("block %d stores nothing but is not a zero block" % i)


def _varint(raw, pos):
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 35:
            raise _bad("has a truncated or overlong number at byte %d" % pos)
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_index(block_size, window, installed_size, modulus, most, groups, frames=None):
    """Top index bytes (uncompressed); groups: [(block count, stored bytes, group id)];
    frames: {group with a front entry: its frame's bytes, 0 for none} (no front: CUIDX3,
    as before front frames)."""
    count = sum(g[0] for g in groups)
    head = struct.pack(HEAD, MAGIC if frames else MAGIC3, block_size, window, installed_size,
                       count, len(groups), modulus, most)  # fmt: skip
    out = [head]
    for g, (n, s, gid) in enumerate(groups):
        out.append(varint(n) + varint(s))
        if frames:
            out.append(varint(frames[g] + 1 if g in frames else 0))
        out.append(gid.to_bytes(ID_SIZE, "big"))
    return b"".join(out)


def parse_index(raw, payload):
    """Top index bytes (uncompressed) -> ChunkIndex for `payload`, or MalformedBundle."""
    raw = bytes(raw)
    if len(raw) < HEAD_SIZE:
        raise _bad("is %d bytes, shorter than its header" % len(raw))
    fields = struct.unpack(HEAD, raw[:HEAD_SIZE])
    magic, block, window, size, count, ngroups, modulus, most = fields
    if magic not in (MAGIC, MAGIC3):
        raise _bad("has a bad magic")
    if not (MIN_BLOCK <= block <= MAX_BLOCK) or block & (block - 1):
        raise _bad("block size %d is not a power of two in %d..%d" % (block, MIN_BLOCK, MAX_BLOCK))
    if window > MAX_WINDOW:
        raise _bad("window %d is above %d" % (window, MAX_WINDOW))
    if size != payload.installed_size:
        raise _bad("is for %d bytes, the payload installs %d" % (size, payload.installed_size))
    if count != (size + block - 1) // block or count > MAX_COUNT:
        raise _bad("has %d blocks, %d bytes of %d-byte blocks need %d" % (count, size, block,
                   (size + block - 1) // block))  # fmt: skip
    if not (1 <= modulus <= MAX_GROUP and 1 <= most <= MAX_GROUP) or ngroups > count:
        raise _bad("has %d groups, modulus %d, at most %d blocks" % (ngroups, modulus, most))
    groups, pos, first, offset, frames = [], HEAD_SIZE, 0, 0, {}
    for g in range(ngroups):
        n, pos = _varint(raw, pos)
        stored, pos = _varint(raw, pos)
        if not 1 <= n <= most or first + n > count or stored > n * block:
            raise _bad("group at block %d has %d blocks, %d bytes" % (first, n, stored))
        if magic == MAGIC:
            front, pos = _varint(raw, pos)
            if front > n * block + 1:
                raise _bad("group %d has a %d-byte frame for %d blocks" % (g, front - 1, n))
            if front:
                frames[g] = front - 1
        if pos + ID_SIZE > len(raw):
            raise _bad("ends inside group %d" % len(groups))
        gid = int.from_bytes(raw[pos : pos + ID_SIZE], "big")
        pos += ID_SIZE
        groups.append((first, n, offset, stored, gid))
        first += n
        offset += stored
    if first != count or pos != len(raw):
        raise _bad("groups cover %d of %d blocks in %d of %d bytes" % (first, count, pos,
                   len(raw)))  # fmt: skip
    index = ChunkIndex(block, window, size, count, modulus, most, groups, frames)
    total = index.detail_size + index.stored_size + index.front_size
    if total != payload.size:
        raise _bad("stores %d bytes, the payload has %d" % (total, payload.size))
    return index
