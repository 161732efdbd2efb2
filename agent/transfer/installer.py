"""Install a signed bundle into the inactive slot, streaming from a path or URL.

Invariant: no payload byte is written before the manifest's signatures, the device policy
(model, hardware revision, expiry, anti-rollback) and the space for every payload were
checked; the inactive slot is marked not bootable before its first byte is written; the
slot is recorded as installed only after every payload was fsynced and read back with the
signed hash. Handing over to the bootloader (try_slot) is the caller's next, separate step,
so a failure anywhere here leaves the booted slot primary and the boot order as it was.
The whole install holds the state dir's lock (a second installer, the daemon or a CLI, is
refused with StateBusy), and a slot installed raises the device's floor of time to the
manifest's `created` (agent/core/floors.py).
"""

from agent.bundle import chunked
from agent.bundle import format as fmt
from agent.bundle.reader import open_bundle, read_exact, read_indexes
from agent.core import policy
from agent.state.components import ComponentStore
from agent.state.slotstate import SlotState
from agent.state.statedir import StateLock
from agent.transfer import adaptive, delta, guard
from agent.transfer import slots as slotio
from agent.transfer.fetch import open_source


class Installed:
    def __init__(self, slot, manifest, counters=None):
        self.slot = slot
        self.manifest = manifest
        # Format 2 by ranges: blocks by origin and "downloaded" bytes (agent/transfer/delta.py)
        self.counters = counters


def read_manifest(source, trust, cfg, now=None, slots=None):
    """Read and fully check the manifest at the head of `source`: (manifest, envelope)."""
    _, envelope = open_bundle(source.read)
    return check_envelope(envelope, trust, cfg, now, slots), envelope


def check_envelope(envelope, trust, cfg, now=None, slots=None):
    """The manifest, if the envelope's signatures and this board's policy accept it.
    slots: the board's SlotState (with its boot env), whose floor is the anti-rollback bound."""
    slots = slots or SlotState(cfg.state_dir)
    return trust.verify(
        envelope,
        device=cfg.device,
        installed_security_version=slots.security_floor(),
        now=now,
    )


def check_version(manifest, expected):
    """The signed manifest must carry the version a job announced (None: no job)."""
    policy.check_version(expected, manifest.version)
    return manifest


def plan(manifest, cfg, slot):
    """(payload, SlotTarget) pairs for `slot`; every target must exist and have room."""
    steps = []
    store = ComponentStore(cfg.state_dir)
    for payload in manifest.payloads:
        if payload.mcu is not None:  # kept with the slot, written to the MCU in its trial
            store.prepare(slot)
            target = slotio.SlotTarget(store.image_path(slot, payload.component))
        else:
            target = slotio.SlotTarget(cfg.slot_target(slot, payload.slot_class),
                                       readback=cfg.reads_back(payload.slot_class))  # fmt: skip
        slotio.check_space(target, payload.installed_size)
        steps.append((payload, target))
    return steps


def without_readback(manifest, cfg):
    """The slot classes of `manifest` that [readback] has written without the read-back, so
    every report of the install can say so."""
    return sorted(set(p.slot_class for p in manifest.payloads
                      if p.mcu is None and not cfg.reads_back(p.slot_class)))  # fmt: skip


def install(
    location, cfg, boot, trust, now=None, progress_factory=None, source_opener=None, readback=True,
    version=None, ranges_opener=None, bundle_format=None,
):  # fmt: skip
    """Verify the bundle at `location` and stream it into the slot that is not booted.

    boot: a BootControl; trust: agent.trust.store.Trust. Returns Installed(slot, manifest).
    progress_factory(total_bytes, label) -> object with update(n)/done(), or None.
    readback=False skips the read-back check; only the benchmark uses it, to show its cost.
    version: the version a job announced; the signed one must equal it.
    source_opener(location, settings) opens the stream (default open_source); ranges_opener
    the random access of an install by ranges (default open_ranges). A caller that passes only
    source_opener (it must see every byte: a detached signature) gets the streamed install.
    bundle_format: what a signed manifest read before said (the daemon's download step);
    1 streams at once instead of asking for the head by Range first. Only a hint: either
    way every byte is checked against the manifest this install reads itself.
    """
    slot = boot.other_slot(boot.booted_slot())
    guard.check_writable(cfg, slot)  # never the running system, whatever the config says
    with StateLock(cfg.state_dir, "installing into slot %s" % slot):
        opener = source_opener or open_source
        by_ranges = source_opener is None or ranges_opener is not None
        if by_ranges and cfg.download.get("delta", True) and bundle_format != 1:
            done = _install_by_ranges(location, cfg, boot, trust, now, progress_factory,
                                      readback, version, ranges_opener)  # fmt: skip
            if isinstance(done, Installed):
                return done
            if done.source is not None:  # on from the bytes the first request brought
                opener = _already_open(done.source)
        return _install(location, cfg, boot, trust, slot, now, progress_factory, opener,
                        readback, version)  # fmt: skip


def _install_by_ranges(location, cfg, boot, trust, now, progress_factory, readback, version,
                       ranges_opener):  # fmt: skip
    """A format-2 bundle fetched by ranges (agent/transfer/delta.py), or delta.StreamInstead
    when the bundle or its server calls for the streamed install."""
    state = SlotState(cfg.state_dir, boot)

    def check(envelope):  # signatures, policy, and the version the job announced
        return check_version(check_envelope(envelope, trust, cfg, now, state), version)

    done = delta.install(
        location, cfg, boot, check, progress_factory, readback,
        prepare=lambda manifest, slot: _prepared(manifest, cfg, boot, slot),
        finish=lambda slot, manifest: ComponentStore(cfg.state_dir).record_release(
            slot, manifest, boot.booted_slot()),
        state=state, opener=ranges_opener,
    )  # fmt: skip
    if isinstance(done, delta.StreamInstead):
        return done
    manifest = done[1]
    state.raise_floors(not_before=max(manifest.created, trust.sync_time()))
    return Installed(*done)


def _already_open(source):
    return lambda _location, _settings: source


def _install(location, cfg, boot, trust, slot, now, progress_factory, opener, readback, version):
    state = SlotState(cfg.state_dir, boot)
    with opener(location, cfg.download) as source:
        manifest, envelope = read_manifest(source, trust, cfg, now, state)
        check_version(manifest, version)
        check_components(manifest, cfg, boot.booted_slot())
        indexes = read_indexes(source.read, manifest)  # format 2 streamed whole: checked too
        steps = plan(manifest, cfg, slot)
        # Endless-data bound: nothing past the signed length of the whole bundle.
        source.set_limit(fmt.bundle_size(len(envelope.raw), manifest))
        total = manifest.payload_bytes
        # From here the inactive slot holds garbage until the last read-back passes.
        boot.mark_bad(slot)
        state.begin_write(slot, manifest.version)
        progress = None
        if progress_factory:
            progress = progress_factory(total, "%s -> slot %s" % (manifest.version, slot))
        for payload, target in steps:
            if payload.name in indexes:
                _write_streamed(source, payload, indexes[payload.name], target, progress, readback)
                continue
            slotio.write_payload(
                source.read, payload, target, cfg.download["chunk_size"], progress, readback,
                readinto=getattr(source, "readinto", None),
            )  # fmt: skip
        source.expect_end()
        if progress:
            progress.done()
    ComponentStore(cfg.state_dir).record_release(slot, manifest, boot.booted_slot())
    state.installed(slot, manifest)
    # A signed, installed manifest says the time is at least its `created` (freeze attack);
    # so does the last time sync.
    state.raise_floors(not_before=max(manifest.created, trust.sync_time()))
    return Installed(slot, manifest)


def _prepared(manifest, cfg, boot, slot):
    check_components(manifest, cfg, boot.booted_slot())
    return plan(manifest, cfg, slot)


def _write_streamed(source, payload, index, target, progress, readback):
    """A format-2 payload from a full download: its units in order, every block checked."""

    def read(n):
        data = read_exact(source.read, n, "payload")
        if progress:
            progress.update(n)
        return data

    blocks = chunked.stream_blocks(read, payload, index)
    slotio.write_chunks(adaptive.batched(blocks), payload, target, readback=readback)


def check_components(manifest, cfg, booted):
    """A release whose MCUs this board lacks, or could not roll back, or that names an MCU
    version it does not carry and the MCU does not run, is refused here."""
    from agent.core.components import check_board, check_uncarried, mcu_payloads
    from agent.core.errors import WrongHardware

    if cfg.section("components"):
        kept = ComponentStore(cfg.state_dir).release(booted)["mcus"]
        carried = set(p.component for p in mcu_payloads(manifest))
        problem = check_uncarried(manifest.components, carried,
                                  dict((n, m["version"]) for n, m in kept.items()))  # fmt: skip
        if problem:
            raise WrongHardware("the release %s" % problem,
                                hint="carry the MCU's image in the release")  # fmt: skip
    if not mcu_payloads(manifest):
        return
    # The MCU drivers are imported only for a release that has MCUs (start-up cost).
    from agent.components import board_components
    from agent.control import components as mcu_steps

    problem = check_board(manifest, board_components(cfg))
    if problem:
        raise WrongHardware("the release %s" % problem)
    mcu_steps.check_kept(cfg, manifest, booted)
