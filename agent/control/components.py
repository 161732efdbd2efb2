"""The MCU steps of an update: write the new slot's MCU images during its trial, confirm
them at the commit, bring them back to the old slot's release on a rollback.

Invariant: the running record of an MCU (agent/state/components.py) says "unknown" from
before the first byte is written until the MCU answers with the new version, so every
decision after a power cut (agent/core/components.py) treats a half-written MCU as one that
must be written again, with the image kept for that slot's release. Every MCU write and
confirm holds the state dir's lock (agent/state/statedir.py), like a slot write: two
writers (the trial's flash and a rollback's restore, or another process) never interleave
on one MCU; the second gets StateBusy naming the first.
"""

import hashlib
import logging

from agent.components import ComponentError, adapter, wait_version
from agent.core import components as core
from agent.core.errors import ConfigError, PayloadMismatch
from agent.state.components import ComponentStore
from agent.state.statedir import StateLock

log = logging.getLogger("charger-update")


def _image(store, slot, name, mcu):
    try:
        image = store.read_image(slot, name)
    except OSError as e:
        raise ConfigError("no image of MCU %s kept for slot %s: %s" % (name, slot, e.strerror),
                          hint="see docs/components.md, provisioning") from None  # fmt: skip
    if mcu.get("sha256") and hashlib.sha256(image).hexdigest() != mcu["sha256"]:
        raise PayloadMismatch("the kept image of MCU %s for slot %s is damaged" % (name, slot))
    return image


def flash(cfg, slot, stack, progress=None):
    """Write every MCU image of `slot`'s release the MCU does not already run: evidence."""
    with StateLock(cfg.state_dir, "writing the MCUs of slot %s's release" % slot):
        return _flash(cfg, slot, stack, progress)


def _flash(cfg, slot, stack, progress):
    store = ComponentStore(cfg.state_dir)
    mcus = store.release(slot)["mcus"]
    recorded = store.running()
    targets = dict((n, m["version"]) for n, m in mcus.items())
    running = dict((n, (recorded.get(n) or {}).get("version")) for n in targets)
    evidence = {}
    for name in core.plan_flash(targets, running):
        mcu = mcus[name]
        image = _image(store, slot, name, mcu)
        store.set_running(name, None, False)  # from here the MCU may hold half an image
        log.info("writing MCU %s: %s (%d bytes, %s)", name, mcu["version"], len(image),
                 mcu["protocol"])  # fmt: skip
        adapter(mcu["id"], cfg, stack).write(image, mcu["address"], mcu["version"], progress)
        store.set_running(name, mcu["version"], False)
        evidence[name] = "wrote %s" % mcu["version"]
    for name in targets:
        evidence.setdefault(name, "already runs %s" % targets[name])
    return evidence


def confirm(cfg, slot, stack):
    """The commit: every MCU keeps the image it runs (MCUboot: image confirm)."""
    store = ComponentStore(cfg.state_dir)
    with StateLock(cfg.state_dir, "confirming the MCUs of slot %s's release" % slot):
        for name, mcu in sorted(store.release(slot)["mcus"].items()):
            adapter(mcu["id"], cfg, stack).confirm()
            store.set_running(name, mcu["version"], True)


def restore(cfg, slot, stack, progress=None):
    """The rollback: bring every MCU back to the release of `slot` (the old one)."""
    with StateLock(cfg.state_dir, "restoring the MCUs of slot %s's release" % slot):
        return _restore(cfg, slot, stack, progress)


def _restore(cfg, slot, stack, progress):
    store = ComponentStore(cfg.state_dir)
    mcus = store.release(slot)["mcus"]
    recorded = store.running()
    kept = dict((n, m["version"]) for n, m in mcus.items())
    running = dict((n, (recorded.get(n) or {}).get("version")) for n in recorded)
    confirmed = dict((n, bool((recorded.get(n) or {}).get("confirmed"))) for n in recorded)
    adapters = dict((n, adapter(m["id"], cfg, stack)) for n, m in mcus.items())
    kinds = dict((n, a.revert) for n, a in adapters.items())
    done = {}
    for name, how in core.plan_restore(kept, running, kinds, confirmed):
        mcu, a = mcus[name], adapters[name]
        if how == core.REVERT_BY_RESET:
            a.reset()  # MCUboot swaps the unconfirmed image back by itself
            if wait_version(lambda a=a: a.running()[0], kept[name], 15) == kept[name]:
                store.set_running(name, kept[name], True)
                done[name] = "reverted to %s" % kept[name]
                continue
            log.warning("MCU %s did not revert by itself; writing %s", name, kept[name])
        image = _image(store, slot, name, mcu)
        store.set_running(name, None, False)
        a.write(image, mcu["address"], mcu["version"], progress)
        a.confirm()
        store.set_running(name, kept[name], True)
        done[name] = "wrote %s again" % kept[name]
    return done


def check_kept(cfg, manifest, old_slot):
    """Before installing: every MCU this release writes can be brought back. An MCU that
    keeps no old image itself (ROM bootloader) needs the old release's image on disk."""
    store = ComponentStore(cfg.state_dir)
    old = store.release(old_slot)["mcus"]
    for p in core.mcu_payloads(manifest):
        if adapter(p.mcu["id"], cfg).revert == core.REVERT_BY_RESET:
            continue
        try:
            _image(store, old_slot, p.component, old.get(p.component) or {"sha256": None})
        except (ConfigError, PayloadMismatch) as e:
            raise ConfigError("cannot write MCU %s: a rollback could not restore it (%s)"
                              % (p.component, e.message), hint=e.hint) from None  # fmt: skip
        if p.component not in old:
            raise ConfigError("slot %s has no release record for MCU %s" % (old_slot, p.component))


def verify_running(cfg, slot, stack):
    """The trial check: every MCU of `slot`'s release answers with its version."""
    store = ComponentStore(cfg.state_dir)
    evidence, wrong = {}, {}
    for name, mcu in sorted(store.release(slot)["mcus"].items()):
        seen = adapter(mcu["id"], cfg, stack).running()[0]
        evidence[name] = seen
        if seen != mcu["version"]:
            wrong[name] = (mcu["version"], seen)
    if wrong:
        raise ComponentError("MCU %s" % "; ".join(
            "%s runs %s, the release needs %s" % (n, w[1] or "nothing that answers", w[0])
            for n, w in sorted(wrong.items())))  # fmt: skip
    return evidence
