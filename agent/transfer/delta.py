"""Install a format-2 bundle by ranges: read its head and chunk indexes, plan each payload
against what the charger already has (agent/transfer/adaptive.py), fetch the rest.

Invariant: the same checks as a full install (agent/transfer/installer.py), in the same
order: nothing is written before the signatures, the device policy, the bundle's signed
length and the room in every slot were checked, the slot is marked not bootable before its
first byte, and recorded as installed only after every payload was rebuilt block by checked
block, fsynced and read back with its signed sha256. A format-1 bundle, or a server that
ignores Range, returns StreamInstead before anything was written: the caller streams the
whole bundle as before, on from what the first request brought (one request of its own,
none at all from a server that answered the first with the whole file).
"""

from agent.bundle import chunked
from agent.bundle import format as fmt
from agent.bundle.reader import read_exact
from agent.core.envelope import MANIFEST_TYPE, parse_envelope
from agent.core.errors import PayloadMismatch, Truncated
from agent.state.slotstate import SlotState
from agent.transfer import adaptive
from agent.transfer import slots as slotio
from agent.transfer.ranges import HEAD_BYTES, RangesUnsupported, open_ranges


class Head:
    """What precedes the payloads: the verified manifest, its envelope, the chunk indexes."""

    def __init__(self, manifest, envelope, indexes, size):
        self.manifest = manifest
        self.envelope = envelope
        self.indexes = indexes  # {payload name: ChunkIndex}
        self.size = size  # bytes of header + envelope + indexes


def _read(ranges, start, length):
    return b"".join(data for _, data in ranges.read_ranges([(start, length)]))


class _Start:
    """The bundle's first bytes, grown on demand: the first request brought HEAD_BYTES,
    `upto(end)` fetches only what is still missing before `end` (in one request)."""

    def __init__(self, ranges):
        self.ranges = ranges
        self.data = ranges.read_start(HEAD_BYTES)

    def upto(self, end, what):
        total = self.ranges.total
        if total is not None and end > total:
            raise Truncated("bundle ends inside the %s: %d of %d bytes" % (what, total, end),
                            hint="the file is incomplete; download it again")  # fmt: skip
        if len(self.data) < end:
            self.data += _read(self.ranges, len(self.data), end - len(self.data))
        return self.data

    def header(self):
        header = self.upto(fmt.HEADER_SIZE, "header")[: fmt.HEADER_SIZE]
        return header, fmt.parse_header(header)


def read_head(ranges, check):
    """The head of a format-2 bundle, or None for format 1 (`ranges.stream()` then reads it
    on from where the first request stopped). `check(envelope)` returns the manifest if its
    signatures and this board's policy accept it (or raises)."""
    start = _Start(ranges)
    header, length = start.header()
    if fmt.header_format(header) != 2:
        return None
    end = fmt.HEADER_SIZE + length
    envelope = parse_envelope(start.upto(end, "signature envelope")[fmt.HEADER_SIZE : end],
                              MANIFEST_TYPE)  # fmt: skip
    manifest = check(envelope)
    fmt.check_format(header, manifest)
    _check_size(ranges.total, fmt.bundle_size(length, manifest))
    head = fmt.HEADER_SIZE + length + fmt.index_bytes(manifest)
    data = start.upto(head, "group indexes")  # every index in one request
    indexes = {}
    for payload, offset in fmt.index_offsets(length, manifest):
        stored = data[offset : offset + payload.index["size"]]
        indexes[payload.name] = chunked.read_index(stored, payload)
    return Head(manifest, envelope, indexes, head)


def read_envelope(location, settings, opener=None):
    """(bundle format, envelope), unverified, for the daemon's download step: the header and
    envelope only (one bounded Range request, two for an envelope longer than HEAD_BYTES),
    so no payload byte crosses the link; from a server without Range support, the start of
    its whole-file answer, which is then dropped. opener(location, settings): the ranges
    (default open_ranges; a job's: open_job_ranges with the step's stopper)."""
    ranges = (opener or open_ranges)(location, settings)
    try:
        try:
            start = _Start(ranges)
        except RangesUnsupported:
            source = ranges.stream()
            header = read_exact(source.read, fmt.HEADER_SIZE, "header")
            length = fmt.parse_header(header)
            raw = read_exact(source.read, length, "signature envelope")
        else:
            header, length = start.header()
            end = fmt.HEADER_SIZE + length
            raw = start.upto(end, "signature envelope")[fmt.HEADER_SIZE : end]
        return fmt.header_format(header), parse_envelope(raw, MANIFEST_TYPE)
    finally:
        ranges.close()


def _check_size(actual, signed):
    if actual is None or actual == signed:
        return
    if actual > signed:
        raise PayloadMismatch(
            "bundle has %d bytes but its manifest allows only %d" % (actual, signed),
            hint="the server or file is not the signed bundle; refusing to download it",
        )
    raise Truncated("bundle has %d bytes but its manifest promises %d" % (actual, signed),
                    hint="the file is incomplete; download or copy it again")  # fmt: skip


def plans(head, cfg, booted, steps, ranges):
    """[(payload, target, Plan or None, offset)] for [(payload, target)] (the installer's
    plan; target None in a dry run): Plan None for a payload without a chunk index. The
    details of the groups the charger lacks are fetched from `ranges` here."""
    result = []
    offsets = dict((p.name, o) for p, o in fmt.payload_offsets(len(head.envelope.raw),
                                                              head.manifest))  # fmt: skip
    for payload, target in steps:
        index = head.indexes.get(payload.name)
        plan = None
        if index is not None:
            if target is None:
                target = slotio.SlotTarget(cfg.slot_target(boot_other(cfg, booted),
                                                           payload.slot_class))  # fmt: skip
            local = cfg.slot_target(booted, payload.slot_class)
            plan = adaptive.make_plan(index, offsets[payload.name], local, target.path, ranges)
        result.append((payload, target, plan, offsets[payload.name]))
    return result


def dry_run(location, cfg, boot, check):
    """What an install would fetch: {"format", "version", "bundle_bytes", "head_bytes",
    "download_bytes", "payloads": [...]} or None for a format-1 bundle (all of it)."""
    ranges = open_ranges(location, cfg.download)
    try:
        head = read_head(ranges, check)
        if head is None:
            return None
        booted = boot.booted_slot()
        rows, fetch = [], 0
        steps = [(p, None) for p in head.manifest.payloads]
        for payload, _target, plan, _ in plans(head, cfg, booted, steps, ranges):
            row = {"name": payload.name, "installed_size": payload.installed_size,
                   "stored_size": payload.size}  # fmt: skip
            row.update(plan.summary() if plan else {"fetch_bytes": payload.size})
            fetch += row["fetch_bytes"]
            rows.append(row)
        m = head.manifest
        return {
            "version": m.version, "bundle_bytes": head.size + m.payload_bytes,
            "head_bytes": head.size, "download_bytes": head.size + fetch, "payloads": rows,
            "head_received": ranges.received,
        }  # fmt: skip
    finally:
        ranges.close()


def boot_other(cfg, booted):
    """The slot that is not `booted` (the names of the [slots] table)."""
    return [s for s in cfg.slots if s != booted][0]


class StreamInstead:
    """A format-1 bundle, or a server without Range support: nothing was written, stream
    the whole bundle. `source` reads it from its first byte without asking again for what
    the first request brought (None for a file: open it as a stream)."""

    def __init__(self, source):
        self.source = source


def install(location, cfg, boot, check, progress_factory=None, readback=True, prepare=None,
            finish=None, state=None, opener=None):  # fmt: skip
    """Install by ranges; returns (slot, manifest, counters), or StreamInstead.
    prepare(manifest, slot) -> [(payload, SlotTarget)] checks what the installer checks
    before writing (components, space); finish(slot, manifest) runs before the slot is
    recorded as installed. state: the board's SlotState (default: the state dir's).
    opener(location, settings): the ranges (default open_ranges; a job's: open_job_ranges)."""
    ranges = (opener or open_ranges)(location, cfg.download)
    handed_over = False
    try:
        try:
            head = read_head(ranges, check)
        except RangesUnsupported:
            head = None
        if head is None:
            stream = ranges.stream()
            handed_over = stream is not None
            return StreamInstead(stream)
        state = state or SlotState(cfg.state_dir, boot)
        return _install(head, ranges, cfg, boot, progress_factory, readback, prepare, finish,
                        state)  # fmt: skip
    finally:
        if not handed_over:
            ranges.close()


def _install(head, ranges, cfg, boot, progress_factory, readback, prepare, finish, state):
    manifest = head.manifest
    booted = boot.booted_slot()
    slot = boot.other_slot(booted)
    targets = (
        prepare(manifest, slot)
        if prepare
        else [
            (p, slotio.SlotTarget(cfg.slot_target(slot, p.slot_class))) for p in manifest.payloads
        ]
    )
    for payload, target in targets:
        slotio.check_space(target, payload.installed_size)
    steps = plans(head, cfg, booted, targets, ranges)
    boot.mark_bad(slot)
    state.begin_write(slot, manifest.version)
    total = sum(p.installed_size for p in manifest.payloads)
    progress = progress_factory(total, "%s -> slot %s" % (manifest.version, slot)) if (
        progress_factory) else None  # fmt: skip
    counters = {}
    for payload, target, plan, offset in steps:
        if plan is None:  # no index: its stored bytes, as a full install takes them
            pieces = iter(ranges.read_ranges([(offset, payload.size)]))
            slotio.write_payload(_reader(pieces), payload, target, readback=readback)
            continue
        target.keep_content = True  # its old blocks are read while the new ones are written
        local = cfg.slot_target(booted, payload.slot_class)
        blocks = adaptive.rebuild(plan, payload, ranges, local, target.path, counters)
        chunks = _reported(adaptive.batched(blocks), progress, ranges)
        slotio.write_chunks(chunks, payload, target, readback=readback)
    if progress:
        progress.done()
    if finish:
        finish(slot, manifest)
    state.installed(slot, manifest)
    counters["downloaded"] = ranges.received
    return slot, manifest, counters


def _reported(chunks, progress, ranges):
    for chunk in chunks:
        if progress is not None:
            if hasattr(progress, "downloaded"):
                progress.downloaded = ranges.received
            progress.update(len(chunk))
        yield chunk


def _reader(pieces):
    """read(n) over the pieces of one range, for write_payload."""
    buf = [b""]

    def read(n):
        if not buf[0]:
            buf[0] = next(pieces, (0, b""))[1]
        data, buf[0] = buf[0][:n], buf[0][n:]
        return data

    return read
