"""Install a signed bundle into the inactive slot, streaming from a path or URL.

Invariant: no payload byte is written before the manifest's signatures, the device policy
(model, hardware revision, expiry, anti-rollback) and the space for every payload were
checked; the inactive slot is marked not bootable before its first byte is written; the
slot is recorded as installed only after every payload was fsynced and read back with the
signed hash. Handing over to the bootloader (try_slot) is the caller's next, separate step,
so a failure anywhere here leaves the booted slot primary and the boot order as it was.
"""

from agent.bundle import format as fmt
from agent.bundle.reader import open_bundle
from agent.core import jobs
from agent.state.components import ComponentStore
from agent.state.slotstate import SlotState
from agent.transfer import guard
from agent.transfer import slots as slotio
from agent.transfer.fetch import open_source


class Installed:
    def __init__(self, slot, manifest):
        self.slot = slot
        self.manifest = manifest


def read_manifest(source, trust, cfg, now=None):
    """Read and fully check the manifest at the head of `source`: (manifest, envelope)."""
    _, envelope = open_bundle(source.read)
    return check_envelope(envelope, trust, cfg, now), envelope


def check_envelope(envelope, trust, cfg, now=None):
    """The manifest, if the envelope's signatures and this board's policy accept it."""
    return trust.verify(
        envelope,
        device=cfg.device,
        installed_security_version=SlotState(cfg.state_dir).security_floor(),
        now=now,
    )


def check_version(manifest, expected):
    """The signed manifest must carry the version a job announced (None: no job)."""
    jobs.check_version(expected, manifest.version)
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
            target = slotio.SlotTarget(cfg.slot_target(slot, payload.slot_class))
        slotio.check_space(target, payload.installed_size)
        steps.append((payload, target))
    return steps


def install(
    location, cfg, boot, trust, now=None, progress_factory=None, source_opener=None, readback=True,
    version=None,
):  # fmt: skip
    """Verify the bundle at `location` and stream it into the slot that is not booted.

    boot: a BootControl; trust: agent.trust.store.Trust. Returns Installed(slot, manifest).
    progress_factory(total_bytes, label) -> object with update(n)/done(), or None.
    readback=False skips the read-back check; only the benchmark uses it, to show its cost.
    version: the version a job announced; the signed one must equal it.
    """
    opener = source_opener or open_source
    slot = boot.other_slot(boot.booted_slot())
    guard.check_writable(cfg, slot)  # never the running system, whatever the config says
    state = SlotState(cfg.state_dir)
    with opener(location, cfg.download) as source:
        manifest, envelope = read_manifest(source, trust, cfg, now)
        check_version(manifest, version)
        check_components(manifest, cfg, boot.booted_slot())
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
            slotio.write_payload(
                source.read, payload, target, cfg.download["chunk_size"], progress, readback,
                readinto=getattr(source, "readinto", None),
            )  # fmt: skip
        source.expect_end()
        if progress:
            progress.done()
    ComponentStore(cfg.state_dir).record_release(slot, manifest)
    state.installed(slot, manifest)
    return Installed(slot, manifest)


def check_components(manifest, cfg, booted):
    """A release whose MCUs this board lacks, or could not roll back, is refused here."""
    from agent.components import board_components
    from agent.control import components as mcu_steps
    from agent.core.components import check_board, mcu_payloads
    from agent.core.errors import WrongHardware

    if not mcu_payloads(manifest):
        return
    problem = check_board(manifest, board_components(cfg))
    if problem:
        raise WrongHardware("the release %s" % problem)
    mcu_steps.check_kept(cfg, manifest, booted)
