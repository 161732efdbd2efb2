"""The delta install of a format-2 payload: build the new slot in order from blocks the charger
already has (its booted slot, and what the inactive slot holds now) and fetch only the others,
as byte ranges of the same bundle.

The charger cuts both slots into blocks and groups by the index's rule: a group of the new
image found in a slot is taken whole, by its signed id; only the other groups' block lists
are fetched (agent/core/chunkindex.py), and their blocks looked up one by one by the short
ids the lists name: in a slot, earlier in the new image (a block fetched once serves every
copy of it), or fetched.

Invariant: no block reaches the slot before it matched the signed chunk index, whether it
came from a local slot or the network: its own id (or short id), then its group's signed
id over all the group's blocks, before any of them is handed out. A local block that does
not match its id (the slot changed since it was indexed, or a bit flipped) is fetched
instead; a group that does not match (a local block that only shares a short id) is
fetched again whole, from its units alone; the whole image's signed sha256 is checked
after the last block (and read back after the fsync, as every install
is). A block of the inactive slot is only taken from where the new image has not been
written yet, so after a power cut the blocks already written are found in place and not
fetched again.
"""

import array
import os
import threading

from agent.bundle import chunked
from agent.core import chunkindex as ci

ZERO, BOOTED, INACTIVE, REMOTE, REPEAT, FRAME = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("zero", "booted", "inactive", "remote", "repeated", "front")
SCAN = 1 << 20  # bytes read per call when indexing a slot
# Fetch up to this many unneeded bytes rather than start another range: what one more part
# of a multipart answer costs in headers (boundary, Content-Type, Content-Range, CRLFs: 110
# bytes from nginx or the bench's server for a bundle of 10-999 MB).
COALESCE_GAP = 110
# Front frames are fetched before the units and held until their group is rebuilt; beyond
# this many bytes of them (a charger far from the releases the bundle was packed for) the
# rest of the hot blocks come as units instead.
FRAME_MEMORY = 64 << 20


def scan(path, block_size):
    """The id of every whole block of the file or device at `path`, in order (empty if it
    cannot be read)."""
    ids = array.array("Q")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return ids
    try:
        pos = 0
        while True:
            data = os.pread(fd, SCAN, pos)
            for off in range(0, len(data) - block_size + 1, block_size):
                ids.append(ci.block_id(data[off : off + block_size]))
            if len(data) < SCAN:
                return ids
            pos += len(data)
    except OSError:
        return ids
    finally:
        os.close(fd)


class Slot:
    """What one local slot holds, by the index's blocks and groups: the first (booted) or
    last (inactive) place of each non-zero short block id (what a group detail names) and
    of each group id."""

    def __init__(self, ids, index, last):
        self.ids = ids
        self.blocks = {}
        self.groups = {}
        zero = index.zero_id
        for k, bid in enumerate(ids):
            if bid != zero:
                short = ci.short_id(bid)
                if last or short not in self.blocks:
                    self.blocks[short] = k
        for first, n in ci.groups(ids, zero, index.modulus, index.most):
            gid = ci.group_id(ids[first : first + n])
            if last or gid not in self.groups:
                self.groups[gid] = first


def coalesce(spans, gap=COALESCE_GAP):
    """Sorted (start, length) spans, neighbours closer than `gap` joined."""
    out = []
    for start, n in spans:
        if out and start - (out[-1][0] + out[-1][1]) <= gap:
            out[-1] = (out[-1][0], start + n - out[-1][0])
        else:
            out.append((start, n))
    return out


class Plan:
    """Where each block of the new image comes from, and what that costs. Groups found in
    a slot are decided at once; `missing` groups once their details came (`take_details`)."""

    def __init__(self, index, payload_offset, booted, inactive):
        self.index = index
        self.payload_offset = payload_offset  # of the stored payload (details, then units)
        self.units_at = payload_offset + index.detail_size
        self.kinds = bytearray(index.count)
        self.local = array.array("q", bytes(8 * index.count))  # block of its slot, or of the image
        self.booted, self.inactive = booted, inactive
        self.missing = []
        self.detail_bytes = 0
        zero_groups = {}
        for g, (first, n, _, stored, gid) in enumerate(index.groups):
            if n not in zero_groups:
                zero_groups[n] = ci.group_id([index.zero_id] * n)
            if stored == 0 and gid == zero_groups[n]:
                index.take_ids(g, [index.zero_id] * n, [0] * n)
                self._decide(first, n, ZERO, 0)
            elif gid in booted.groups:
                self._take(g, BOOTED, booted, booted.groups[gid])
            elif inactive.groups.get(gid, -1) >= first:  # not overwritten before it is needed
                self._take(g, INACTIVE, inactive, inactive.groups[gid])
            else:
                self.missing.append(g)
        self.spans = []
        self.frames = []  # groups whose front frame is fetched
        self.frame_spans = []

    def _take(self, g, kind, slot, at):
        first, n = self.index.groups[g][:2]
        if not self.index.take_ids(g, list(slot.ids[at : at + n])):
            self.missing.append(g)  # cannot happen unless hashing lies; fetch it then
            return
        self._decide(first, n, kind, at)

    def _decide(self, first, n, kind, at):
        for j in range(n):
            self.kinds[first + j] = kind
            self.local[first + j] = at + j

    def list_span(self, g):
        """(bundle offset, length) of group g's block list: its front entry if it has one,
        else its detail."""
        front = self.index.front.get(g)
        at, n = front[:2] if front else self.index.detail_span(g)
        return self.payload_offset + at, n

    def frame_span(self, g):
        """(bundle offset, length) of group g's front frame."""
        front = self.index.front[g]
        return self.payload_offset + front[2], front[3]

    def detail_spans(self):
        """Coalesced byte ranges of the bundle holding the missing groups' block lists."""
        return coalesce(sorted(self.list_span(g) for g in self.missing))

    def take_details(self, ranges):
        """Fetch the missing groups' block lists (their sizes checked; their short ids are
        checked with the blocks, by the group ids), then decide their blocks: the front
        frames to fetch, the details still needed for blocks the frames do not hold (one more
        request), and the ranges of units to fetch."""
        self._take_lists(ranges)
        seen = {}  # block id -> the first block of the new image that has it
        held = 0  # bytes of the frames chosen so far
        for g in sorted(self.missing):
            first, n = self.index.groups[g][:2]
            hot = self.index.hot.get(g, ())
            for i in range(first, first + n):
                self._decide_block(i, seen, i in hot)
            held += self._choose_frame(g, hot, held)
        self._take_remaining_details(ranges)
        self.frame_spans = coalesce([self.frame_span(g) for g in self.frames])
        self.spans = self._unit_spans()

    def _take_lists(self, ranges):
        """The missing groups' front entries or details, in one request."""
        spans = self.detail_spans()
        got = _Units(iter(ranges.read_ranges(spans)))
        self.detail_bytes = sum(n for _, n in spans)
        for g in sorted(self.missing, key=self.list_span):  # _Units reads in offset order
            data = got.get(*self.list_span(g))
            if g in self.index.front:
                self.index.take_entry(g, data)
            else:
                self.index.take_detail(g, data)

    def _choose_frame(self, g, hot, held):
        """Fetch group g's frame for the hot blocks the charger lacks (bytes it adds to what
        is held), or take those blocks as units: when it lacks less than half of the frame
        (packed for several bases, or half written before a power cut) or the frames held
        would pass FRAME_MEMORY."""
        need = [i for i in hot if self.kinds[i] == FRAME]
        if not need:
            return 0
        size = self.index.front[g][3]
        if 2 * len(need) >= len(hot) and held + size <= FRAME_MEMORY:
            self.frames.append(g)
            return size
        for i in need:
            self.kinds[i] = REMOTE
        return 0

    def _take_remaining_details(self, ranges):
        """The details of front groups with blocks to fetch as units (the charger lacks a
        block the bundle was not packed for): their unit lengths."""
        index, po = self.index, self.payload_offset
        need = [g for g in self.missing if g in index.front and any(
            self.kinds[i] == REMOTE for i in range(*_bounds(index, g)))]  # fmt: skip
        if not need:
            return
        details = dict((g, index.detail_span(g)) for g in need)
        spans = coalesce([(po + at, n) for at, n in details.values()])
        got = _Units(iter(ranges.read_ranges(spans)))
        self.detail_bytes += sum(n for _, n in spans)
        for g in need:
            at, n = details[g]
            index.take_detail(g, got.get(po + at, n))
            for i in range(*_bounds(index, g)):
                if self.kinds[i] == REMOTE and index.lengths[i] == 0:
                    # the entry named no zero block here (the server lied in it or in the
                    # detail): nothing to fetch, the zero block is checked as taken
                    self.kinds[i] = ZERO

    def _decide_block(self, i, seen, hot=False):
        index = self.index
        bid = index.short[i]  # a short id may name another block: the group check says
        length = index.lengths[i]
        if length == 0 or (length is None and not hot and bid == index.zero_short):
            kind, at = ZERO, 0  # (an entry has no lengths: a zero block is checked as read)
        elif bid in self.booted.blocks:
            kind, at = BOOTED, self.booted.blocks[bid]
        elif self.inactive.blocks.get(bid, -1) >= i:
            kind, at = INACTIVE, self.inactive.blocks[bid]
        elif bid in seen:
            kind, at = REPEAT, seen[bid]  # fetched once, for its first place in the image
        else:
            kind, at = FRAME if hot else REMOTE, 0
            seen[bid] = i
        self.kinds[i], self.local[i] = kind, at

    def _unit_spans(self):
        idx = self.index
        spans = [(self.units_at + idx.offsets[i], idx.lengths[i])
                 for i in range(idx.count) if self.kinds[i] == REMOTE]  # fmt: skip
        return coalesce(spans)

    def fetches(self):
        """The ranges of the payload's data requests, in order: frames, then units."""
        return [spans for spans in (self.frame_spans, self.spans) if spans]

    @property
    def fetch_bytes(self):
        return self.detail_bytes + sum(n for spans in self.fetches() for _, n in spans)

    def summary(self):
        """{kind: blocks} and the bytes to fetch, for `install --plan` and the status."""
        counts = dict((name, 0) for name in KIND_NAMES)
        for kind in self.kinds:
            counts[KIND_NAMES[kind]] += 1
        return {"blocks": counts, "groups": len(self.index.groups),
                "groups_fetched": len(self.missing), "detail_bytes": self.detail_bytes,
                "frames": len(self.frames), "ranges": len(self.frame_spans) + len(self.spans),
                "fetch_bytes": self.fetch_bytes}  # fmt: skip


def make_plan(index, payload_offset, booted_path, inactive_path, ranges):
    """Index both slots in parallel (hashlib releases the GIL), plan from them, fetch the
    details of the groups neither slot has (`ranges`: the bundle's)."""
    found = {}

    def run(key, path):
        found[key] = scan(path, index.block_size) if path else array.array("Q")

    threads = [
        threading.Thread(target=run, args=("booted", booted_path), name="index-booted"),
        threading.Thread(target=run, args=("inactive", inactive_path), name="index-slot"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plan = Plan(index, payload_offset, Slot(found["booted"], index, False),
                Slot(found["inactive"], index, True))  # fmt: skip
    plan.take_details(ranges)
    return plan


def _bounds(index, g):
    first, n = index.groups[g][:2]
    return first, first + n


class _Units:
    """The fetched bytes, cut out of the pieces `read_ranges` yields (in offset order)."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.start = 0
        self.buf = b""

    def get(self, offset, n):
        end = offset + n
        while not (self.start <= offset and end <= self.start + len(self.buf)):
            start, data = next(self.pieces)
            if start == self.start + len(self.buf) and self.start <= offset < start:
                self.buf = self.buf[offset - self.start :] + data  # a unit across two pieces
                self.start = offset
            else:
                self.start, self.buf = start, data
        return self.buf[offset - self.start : end - self.start]


def _read(ranges, start, n):
    return b"".join(d for _, d in ranges.read_ranges([(start, n)]))


def refetch(plan, i, ranges):
    """Block i's unit, fetched alone (its group's detail first if only its id was known)."""
    index = plan.index
    if index.lengths[i] is None:
        g = index.group_of(i)
        at, n = index.detail_span(g)
        index.take_detail(g, _read(ranges, plan.payload_offset + at, n))
    return _read(ranges, plan.units_at + index.offsets[i], index.lengths[i])


def refetch_group(plan, g, ranges):
    """Group g's detail and units fetched again (one request): {block: unit}."""
    index = plan.index
    first, n, offset, stored = index.groups[g][:4]
    at, size = index.detail_span(g)
    spans = [(plan.payload_offset + at, size)]
    if stored:
        spans.append((plan.units_at + offset, stored))
    got = _Units(iter(ranges.read_ranges(spans)))
    index.take_detail(g, got.get(plan.payload_offset + at, size))
    return dict((i, got.get(plan.units_at + index.offsets[i], index.lengths[i]))
                for i in range(first, first + n))  # fmt: skip


class _Rebuild:
    """One payload's rebuild: where each block comes from (the plan), the open slots, the
    fetched frames and units, and the fetched blocks the image repeats."""

    def __init__(self, plan, payload, ranges, fds, counters):
        self.plan, self.index, self.ranges, self.fds = plan, plan.index, ranges, fds
        self.rb = chunked.Rebuilder(payload, plan.index)
        front = _Units(iter(ranges.read_ranges(plan.frame_spans)))
        self.frames = dict((g, front.get(*plan.frame_span(g))) for g in plan.frames)
        self.units = _Units(iter(ranges.read_ranges(plan.spans)))
        self.repeated = set(plan.local[i] for i in range(plan.index.count)
                            if plan.kinds[i] == REPEAT)  # fmt: skip
        self.kept = {}  # fetched blocks the image has again later
        self.decoded = {}  # the hot blocks of the current group's frame
        self.counters = counters

    def group(self, g):
        """Group g's blocks, checked: as planned, or (if they do not make the group's
        signed id: a short id that named another local block) fetched again whole."""
        first, n = self.index.groups[g][:2]
        try:
            frame = self.frames.pop(g, None)
            for i in range(first, first + n):
                if frame is not None and i == self.index.hot[g][0]:
                    self.decoded = self.rb.from_frame(g, frame)
                self.block(i, g)
            return self.rb.end_group(g)
        except chunked.GroupMismatch:
            self.counters["refetched"] += n
            self.rb.restart_group(g)  # a unit or frame may fail before the group's end
            units = refetch_group(self.plan, g, self.ranges)
            for i in range(first, first + n):
                self.rb.from_unit(i, units[i])  # the bundle's own units: a mismatch is final
                if i in self.repeated:
                    self.kept[i] = self.rb.pending[-1][0]
            return self.rb.end_group(g)
        finally:
            self.decoded = {}

    def block(self, i, g):
        plan, index, rb = self.plan, self.index, self.rb
        kind = plan.kinds[i]
        self.counters[KIND_NAMES[kind]] += 1
        if kind == REMOTE:
            rb.from_unit(i, self.units.get(plan.units_at + index.offsets[i], index.lengths[i]), g)
            if i in self.repeated:
                self.kept[i] = rb.pending[-1][0]
            return
        if kind == ZERO and index.lengths[i] == 0:
            rb.from_unit(i, b"", g)
            if i in self.repeated:  # a zero block planned as fetched: see take_details
                self.kept[i] = rb.pending[-1][0]
            return
        if kind == FRAME:
            block = self.decoded.get(i)
            bid = rb.check(i, block) if block is not None else None
            if bid is None:
                raise chunked.GroupMismatch("payload %s: block %d of the front frame does not "
                                            "match the signed chunk index" % (rb.payload.name, i),
                                            g)  # fmt: skip
            rb.take(i, block, bid)
            if i in self.repeated:
                self.kept[i] = block
            return
        if kind == ZERO:
            block = rb.zero  # named by a front entry's short id only: checked like a slot's
        elif kind == REPEAT:
            block = self.kept[plan.local[i]]
        else:
            at = plan.local[i] * index.block_size
            block = os.pread(self.fds[kind], index.block_length(i), at)
        bid = rb.check(i, block)
        if bid is not None:
            return rb.take(i, block, bid)
        self.counters["refetched"] += 1  # changed since it was indexed: never trusted
        rb.from_unit(i, refetch(plan, i, self.ranges), g)


def rebuild(plan, payload, ranges, booted_path, inactive_path, counters=None):
    """The new image's blocks, in order, each group checked against the index before its
    blocks come out (see module docstring); `ranges` is a FileRanges/HttpRanges of the
    bundle. `counters` (a dict) collects how many blocks came from where, and how many
    were fetched again."""
    counters = counters if counters is not None else {}
    for name in KIND_NAMES + ("refetched",):
        counters.setdefault(name, 0)
    fds = {}
    try:
        for kind, path in ((BOOTED, booted_path), (INACTIVE, inactive_path)):
            if path and kind in plan.kinds:
                fds[kind] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        work = _Rebuild(plan, payload, ranges, fds, counters)
        for g in range(len(plan.index.groups)):
            yield from work.group(g)
        work.rb.finish()
    finally:
        for fd in fds.values():
            os.close(fd)


def batched(blocks, size=1 << 20):
    """Join blocks into writes of about `size` bytes (fewer syscalls, O_DIRECT-sized)."""
    parts, n = [], 0
    for block in blocks:
        parts.append(block)
        n += len(block)
        if n >= size:
            yield b"".join(parts)
            parts, n = [], 0
    if parts:
        yield b"".join(parts)
