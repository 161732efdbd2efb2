"""The component model: a release is a set of component versions that belong together.

A charger is its Linux slot plus microcontrollers (safety MCU, power module, meter). Each
payload names its `component` and `type`: "slot" payloads go into the inactive A/B slot as
before (component defaults to the slot class), "mcu" payloads carry an `mcu` object
{id, protocol, address, version}. The manifest's optional `components` mapping says which
component versions belong together; without it, it is derived from the payloads (slot
components at the release's version, MCUs at their own).

The decisions here are pure (no I/O, runs on MicroPython): what an update must flash, what
a rollback must restore and how, and whether what runs matches a release.

Invariant: after a commit every component runs the version the committed release lists;
after a rollback every component runs the version the old slot's release lists.
"""

from agent.core import semver
from agent.core.errors import MalformedBundle

SLOT = "slot"
MCU = "mcu"
TYPES = (SLOT, MCU)
MCU_FIELDS = ("id", "protocol", "address", "version")
MAX_ADDRESS = 0xFFFFFFFF

# How a component returns to an older image: protocols that keep the old image themselves
# (MCUboot's revert) only need a reset while the new one is unconfirmed; the others have one
# copy of flash and are written again from the image kept with the old slot.
REVERT_BY_RESET = "reset"
REVERT_BY_REFLASH = "reflash"
# The MCU already runs the old release's image, on trial (a power cut let MCUboot swap in
# the image a rollback had uploaded and marked for test): it only needs confirming.
CONFIRM = "confirm"


def _bad(field, what):
    return MalformedBundle("manifest field %s %s" % (field, what))


def _name(value, field):
    if not isinstance(value, str) or not (1 <= len(value) <= 64):
        raise _bad(field, "must be a string of 1..64 characters")
    for c in value:
        if not (c.isalpha() or c.isdigit() or c in "-_.+") or ord(c) > 127:
            raise _bad(field, "may hold only ASCII letters, digits and - _ . +")
    return value


def payload_fields(entry, where):
    """(type, component, mcu dict or None) of one manifest payload entry."""
    kind = entry.get("type", SLOT)
    if kind not in TYPES:
        raise _bad(where + "type", "must be one of %s" % ", ".join(TYPES))
    if kind == SLOT:
        if "mcu" in entry:
            raise _bad(where + "mcu", "belongs to type mcu payloads only")
        component = entry.get("component", entry.get("slot_class"))
        return kind, _name(component, where + "component"), None
    if "slot_class" in entry:
        raise _bad(where + "slot_class", "is for slot payloads; an mcu payload has mcu.id")
    mcu = entry.get("mcu")
    if not isinstance(mcu, dict):
        raise _bad(where + "mcu", "must be an object {id, protocol, address, version}")
    for key in mcu:
        if key not in MCU_FIELDS:
            raise _bad(where + "mcu." + str(key)[:40], "is not a known field")
    address = mcu.get("address")
    if (
        not isinstance(address, int)
        or isinstance(address, bool)
        or not (0 <= address <= MAX_ADDRESS)
    ):
        raise _bad(where + "mcu.address", "must be an integer in 0..0xFFFFFFFF")
    if not semver.is_valid(mcu.get("version")):
        raise _bad(where + "mcu.version", "must be a semantic version like 2.1.0")
    checked = {
        "id": _name(mcu.get("id"), where + "mcu.id"),
        "protocol": _name(mcu.get("protocol"), where + "mcu.protocol"),
        "address": address,
        "version": mcu["version"],
    }
    component = entry.get("component", checked["id"])
    return kind, _name(component, where + "component"), checked


def release_components(value, payloads, version):
    """The component -> version mapping of a release; checks it against the payloads."""
    derived = {}
    for p in payloads:
        derived[p.component] = p.mcu["version"] if p.mcu else version
    if value is None:
        return derived
    if not isinstance(value, dict) or not (1 <= len(value) <= 64):
        raise _bad("components", "must map 1..64 component names to versions")
    result = {}
    for name in value:
        _name(name, "components")
        if not semver.is_valid(value[name]):
            raise _bad("components." + name, "must be a semantic version")
        result[name] = value[name]
    for name in derived:
        if result.get(name) != derived[name]:
            raise _bad("components." + name, "must be %s, the version its payload carries"
                       % derived[name])  # fmt: skip
    return result


def mcu_payloads(manifest):
    return [p for p in manifest.payloads if getattr(p, "type", SLOT) == MCU]


def check_board(manifest, board):
    """Refuse a release whose MCU payloads this board cannot take; returns the problem as a
    string (None when fine). board: {mcu id: {"protocol": ...}} from the config."""
    for p in mcu_payloads(manifest):
        mcu = board.get(p.mcu["id"])
        if mcu is None:
            return "carries firmware for MCU %r that this board does not have" % p.mcu["id"]
        if mcu.get("protocol") != p.mcu["protocol"]:
            return "MCU %r is flashed with %s on this board, the release says %s" % (
                p.mcu["id"], mcu.get("protocol"), p.mcu["protocol"])  # fmt: skip
    return None


def check_uncarried(components, carried, kept):
    """A release may name an MCU's version without carrying its image only if that is the
    version the MCU keeps; returns the problem as a string (None when fine).
    components: the manifest's {name: version}; carried: names it has a payload for; kept:
    {name: version} of the MCUs in the booted slot's release."""
    for name in sorted(components):
        if name in carried or name not in kept or kept[name] == components[name]:
            continue
        return "names MCU %s %s without carrying its image; this charger's %s runs %s" % (
            name, components[name], name, kept[name])  # fmt: skip
    return None


def plan_flash(targets, running):
    """Components to write: targets {name: version}, running {name: version or None}
    (None: the MCU did not answer, e.g. a torn write left it without an application)."""
    return sorted(n for n in targets if running.get(n) != targets[n])


def plan_restore(kept, running, revert_kinds, confirmed):
    """[(name, how)] to bring each component back to the old release; how is CONFIRM,
    REVERT_BY_RESET or REVERT_BY_REFLASH.

    kept: {name: version} of the old slot's release; running: what the MCUs run (None: no
    answer, or a write left unfinished); revert_kinds: {name: REVERT_BY_RESET |
    REVERT_BY_REFLASH}; confirmed: {name: bool}, whether the running image is permanent
    (an MCUboot image confirmed at a commit). An MCU that reverts by itself and does not
    answer is reset first: a hung application on trial is what MCUboot reverts (the step
    writes the old image when the reset does not bring it back)."""
    plan = []
    for name in sorted(kept):
        if running.get(name) == kept[name]:
            if not confirmed.get(name, True):
                plan.append((name, CONFIRM))
            continue
        how = revert_kinds.get(name, REVERT_BY_REFLASH)
        if how == REVERT_BY_RESET and confirmed.get(name):
            how = REVERT_BY_REFLASH  # confirmed at a commit: nothing left to swap back to
        plan.append((name, how))
    return plan


def mismatches(expected, running):
    """{name: (expected, running)} for every component not running its release's version."""
    out = {}
    for name in expected:
        if running.get(name) != expected[name]:
            out[name] = (expected[name], running.get(name))
    return out
