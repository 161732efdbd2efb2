"""The delta install of a format-2 payload: build the new slot in order from blocks the charger
already has (its booted slot, and what the inactive slot holds now) and fetch only the others,
as byte ranges of the same bundle.

Invariant: no block reaches the slot before its id matched the signed chunk index, whether
it came from a local slot or the network: a local block that does not match (the slot
changed since it was indexed, or a bit flipped) is fetched instead; the whole image's signed
sha256 is checked after the last block (and read back after the fsync, as every install
is). A block of the inactive slot is only taken from where the new image has not been
written yet, so after a power cut the blocks already written are found in place and not
fetched again.
"""

import os
import threading

from agent.bundle import chunked
from agent.core import chunkindex as ci

ZERO, BOOTED, INACTIVE, REMOTE = 0, 1, 2, 3
KIND_NAMES = ("zero", "booted", "inactive", "remote")
SCAN = 1 << 20  # bytes read per call when indexing a slot
COALESCE_GAP = 256  # fetch up to this many unneeded bytes rather than start another range


def scan(path, block_size, last=False):
    """{block id: offset} of every whole non-zero block of the file or device at `path`
    ({} if it cannot be read): the first offset of each id, or with `last` the last one."""
    found = {}
    zero = bytes(block_size)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return found
    try:
        pos = 0
        while True:
            data = os.pread(fd, SCAN, pos)
            for off in range(0, len(data) - block_size + 1, block_size):
                block = data[off : off + block_size]
                if block != zero:
                    bid = ci.block_id(block)
                    if last or bid not in found:
                        found[bid] = pos + off
            if len(data) < SCAN:
                return found
            pos += len(data)
    except OSError:
        return found
    finally:
        os.close(fd)


class Plan:
    """Where each block of the new image comes from, and what that costs."""

    def __init__(self, index, payload_offset, booted, inactive):
        self.index = index
        self.payload_offset = payload_offset  # of the payload's first unit in the bundle
        self.kinds = bytearray(index.count)
        self.local = [0] * index.count  # offset in the local slot, for BOOTED/INACTIVE
        bs = index.block_size
        for i, bid in enumerate(index.ids):
            if index.lengths[i] == 0:
                self.kinds[i] = ZERO
            elif bid in booted:
                self.kinds[i], self.local[i] = BOOTED, booted[bid]
            elif inactive.get(bid, -1) >= i * bs:  # not yet overwritten when it is needed
                self.kinds[i], self.local[i] = INACTIVE, inactive[bid]
            else:
                self.kinds[i] = REMOTE
        self.spans = self._spans()

    def _spans(self):
        spans = []
        idx = self.index
        for i in range(idx.count):
            if self.kinds[i] != REMOTE:
                continue
            start, n = self.payload_offset + idx.offsets[i], idx.lengths[i]
            if spans and start - (spans[-1][0] + spans[-1][1]) <= COALESCE_GAP:
                spans[-1] = (spans[-1][0], start + n - spans[-1][0])
            else:
                spans.append((start, n))
        return spans

    @property
    def fetch_bytes(self):
        return sum(n for _, n in self.spans)

    def summary(self):
        """{kind: blocks} and the bytes to fetch, for `install --plan` and the status."""
        counts = dict((name, 0) for name in KIND_NAMES)
        for kind in self.kinds:
            counts[KIND_NAMES[kind]] += 1
        return {"blocks": counts, "ranges": len(self.spans), "fetch_bytes": self.fetch_bytes}


def make_plan(index, payload_offset, booted_path, inactive_path):
    """Index both slots in parallel (hashlib releases the GIL) and plan from them."""
    found = {}

    def run(key, path, last):
        found[key] = scan(path, index.block_size, last) if path else {}

    threads = [
        threading.Thread(target=run, args=("booted", booted_path, False), name="index-booted"),
        threading.Thread(target=run, args=("inactive", inactive_path, True), name="index-slot"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Plan(index, payload_offset, found["booted"], found["inactive"])


class _Units:
    """The fetched units, cut out of the pieces `read_ranges` yields (in offset order)."""

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


def rebuild(plan, payload, ranges, booted_path, inactive_path, counters=None):
    """The new image's blocks, in order, each checked against the index (see module
    docstring); `ranges` is a FileRanges/HttpRanges of the bundle. `counters` (a dict)
    collects how many blocks came from where, refetches included."""
    index = plan.index
    rb = chunked.Rebuilder(payload, index)
    units = _Units(iter(ranges.read_ranges(plan.spans)))
    fds = {}
    counters = counters if counters is not None else {}
    for name in KIND_NAMES + ("refetched",):
        counters.setdefault(name, 0)
    try:
        for kind, path in ((BOOTED, booted_path), (INACTIVE, inactive_path)):
            if path and kind in plan.kinds:
                fds[kind] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        for i in range(index.count):
            kind = plan.kinds[i]
            unit_at = plan.payload_offset + index.offsets[i]
            if kind == REMOTE:
                block = rb.from_unit(i, units.get(unit_at, index.lengths[i]))
            elif kind == ZERO:
                block = rb.from_unit(i, b"")
            else:
                block = os.pread(fds[kind], index.block_length(i), plan.local[i])
                if rb.check(i, block):
                    block = rb.take(i, block)
                else:  # changed since it was indexed: never trusted, fetched instead
                    counters["refetched"] += 1
                    unit = b"".join(d for _, d in ranges.read_ranges([(unit_at, index.lengths[i])]))
                    block = rb.from_unit(i, unit)
            counters[KIND_NAMES[kind]] += 1
            yield block
        rb.finish()
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
