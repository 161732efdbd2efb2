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


def _tick(progress):
    """progress(phase, done, total) as the adapters' sign of life: phase "wait"."""
    return (lambda: progress("wait", 0, 0)) if progress else None


def _adapters(cfg, mcus, stack, progress):
    tick = _tick(progress)
    return dict((n, adapter(m["id"], cfg, stack, tick)) for n, m in mcus.items())


def _running(store, adapters):
    """{name: (version, confirmed)} of every MCU the adapters or the record know. An
    authoritative adapter (MCUboot: its bootloader hash-checks what it boots) is asked,
    since after a power cut its MCU may have reverted or swapped in a tested image; for
    the others the record decides (None from the first byte of a write to its end)."""
    recorded = store.running()
    out = {}
    for name in set(recorded) | set(adapters):
        a = adapters.get(name)
        if a is not None and getattr(a, "authoritative", False):
            out[name] = tuple(a.running())
        else:
            rec = recorded.get(name) or {}
            out[name] = (rec.get("version"), bool(rec.get("confirmed")))
    return out


def _keep_record_true(store, name, seen):
    rec = store.running().get(name) or {}
    if (rec.get("version"), bool(rec.get("confirmed"))) != (seen[0], bool(seen[1])):
        store.set_running(name, seen[0], seen[1])


def flash(cfg, slot, stack, progress=None):
    """Write every MCU image of `slot`'s release the MCU does not already run: evidence."""
    with StateLock(cfg.state_dir, "writing the MCUs of slot %s's release" % slot):
        return _flash(cfg, slot, stack, progress)


def _flash(cfg, slot, stack, progress):
    store = ComponentStore(cfg.state_dir)
    mcus = store.release(slot)["mcus"]
    adapters = _adapters(cfg, mcus, stack, progress)
    seen = _running(store, adapters)
    targets = dict((n, m["version"]) for n, m in mcus.items())
    todo = core.plan_flash(targets, dict((n, seen[n][0]) for n in targets))
    evidence = {}
    for name in sorted(targets):
        if name not in todo:
            _keep_record_true(store, name, seen[name])
            evidence[name] = "already runs %s" % targets[name]
            continue
        mcu = mcus[name]
        image = _image(store, slot, name, mcu)
        store.set_running(name, None, False)  # from here the MCU may hold half an image
        log.info("writing MCU %s: %s (%d bytes, %s)", name, mcu["version"], len(image),
                 mcu["protocol"])  # fmt: skip
        adapters[name].write(image, mcu["address"], mcu["version"], progress)
        store.set_running(name, mcu["version"], False)
        evidence[name] = "wrote %s" % mcu["version"]
    return evidence


def confirm(cfg, slot, stack, progress=None):
    """The commit: every MCU keeps the image it runs (MCUboot: image confirm), which must be
    the release's (an MCU that reverted since the checks must not confirm the old one)."""
    store = ComponentStore(cfg.state_dir)
    with StateLock(cfg.state_dir, "confirming the MCUs of slot %s's release" % slot):
        for name, mcu in sorted(store.release(slot)["mcus"].items()):
            a = adapter(mcu["id"], cfg, stack, _tick(progress))
            if getattr(a, "authoritative", False):
                seen = a.running()[0]
                if seen != mcu["version"]:
                    raise ComponentError("MCU %s runs %s at the commit, not %s"
                                         % (name, seen, mcu["version"]))  # fmt: skip
            a.confirm()
            store.set_running(name, mcu["version"], True)


def restore(cfg, slot, stack, progress=None):
    """The rollback: bring every MCU back to the release of `slot` (the old one).
    progress(phase, done, total) is called as bytes move and (phase "wait") while an MCU is
    waited for: the daemon pets the watchdog with it, this runs on its loop thread."""
    with StateLock(cfg.state_dir, "restoring the MCUs of slot %s's release" % slot):
        return _restore(cfg, slot, stack, progress)


def _restore(cfg, slot, stack, progress):
    store = ComponentStore(cfg.state_dir)
    mcus = store.release(slot)["mcus"]
    adapters = _adapters(cfg, mcus, stack, progress)
    seen = _running(store, adapters)
    kept = dict((n, m["version"]) for n, m in mcus.items())
    kinds = dict((n, a.revert) for n, a in adapters.items())
    plan = core.plan_restore(kept, dict((n, s[0]) for n, s in seen.items()), kinds,
                             dict((n, s[1]) for n, s in seen.items()))  # fmt: skip
    for name in set(kept) - set(n for n, _ in plan):
        _keep_record_true(store, name, (kept[name], True))
    done = {}
    for name, how in plan:
        done[name] = _restore_one(store, slot, name, mcus[name], adapters[name], how, progress)
    return done


def _restore_one(store, slot, name, mcu, a, how, progress):
    version = mcu["version"]
    if how == core.CONFIRM:
        a.confirm()
        store.set_running(name, version, True)
        return "confirmed %s" % version
    if how == core.REVERT_BY_RESET:
        a.reset()  # MCUboot swaps the unconfirmed image back by itself
        seen = wait_version(lambda: a.running()[0], version, 15, a.tick)
        if seen == version:
            store.set_running(name, version, True)
            return "reverted to %s" % version
        log.warning("MCU %s did not revert by itself (runs %s); writing %s", name, seen, version)
    image = _image(store, slot, name, mcu)
    store.set_running(name, None, False)
    a.write(image, mcu["address"], version, progress)
    a.confirm()
    store.set_running(name, version, True)
    return "wrote %s again" % version


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
