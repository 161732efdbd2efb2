"""`charger-update boot status | mark-good [SLOT] | mark-bad SLOT | try SLOT [--attempts N]`.

Invariant: every action goes through the configured backend's contract (one env write each)
under the state dir's lock; status reads only, and shows the booted slot as unknown rather
than guessing when the kernel command line does not name one. mark-good is a commit like a
passed trial: it raises the anti-rollback floor to the slot's security version. mark-bad is
refused when no other slot holds an installed system with boot attempts left (the board would
boot an empty slot), as `try` refuses a slot with nothing to fall back to.
"""

import json
import os

from agent import config as agent_config
from agent.core.errors import BootEnvError
from agent.state.atomic import read_json
from agent.state.slotstate import SlotState
from agent.state.statedir import StateLock
from bootloader_iface import open_from_config

INSTALLED = ("installed", "good")  # slot record states that hold a whole, verified system


def register(subparsers):
    parser = subparsers.add_parser(
        "boot", help="A/B boot control: status, mark-good, mark-bad, try"
    )
    actions = parser.add_subparsers(dest="boot_action", metavar="ACTION")
    status = actions.add_parser("status", help="slots, versions, attempts left, primary")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    good = actions.add_parser("mark-good", help="commit SLOT (default: the booted slot)")
    good.add_argument("slot", nargs="?", metavar="SLOT")
    good.set_defaults(func=cmd_mark_good)
    bad = actions.add_parser("mark-bad", help="never boot SLOT again until the next try")
    bad.add_argument("slot", metavar="SLOT")
    bad.set_defaults(func=cmd_mark_bad)
    trial = actions.add_parser("try", help="boot SLOT next, for at most N attempts")
    trial.add_argument("slot", metavar="SLOT")
    trial.add_argument("--attempts", type=int, default=1, metavar="N", help="1-9 (default 1)")
    trial.set_defaults(func=cmd_try)

    def usage(args):
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _open(args):
    cfg = agent_config.load(args.config)
    return cfg, open_from_config(cfg)


def slot_versions(cfg):
    """{slot: version} from state_dir/slots.json when the installer has written it."""
    data = read_json(os.path.join(cfg.state_dir, "slots.json"), default={}) or {}
    slots = data.get("slots", {}) if isinstance(data, dict) else {}
    return dict((s, v.get("version")) for s, v in slots.items() if isinstance(v, dict))


def collect_status(cfg, boot):
    """The contract's status() plus versions; the booted slot may be unknown (None)."""
    try:
        booted, booted_error = boot.booted_slot(), None
    except BootEnvError as e:
        booted, booted_error = None, str(e)
    versions = slot_versions(cfg)
    slots = {}
    for slot in boot.slots:
        left = boot.attempts_left(slot)
        slots[slot] = {"attempts_left": left, "bootable": left > 0, "version": versions.get(slot)}
    status = {"backend": boot.name, "booted": booted, "primary": boot.primary_slot()}
    status["slots"] = slots
    if booted_error:
        status["booted_error"] = booted_error
    return status


ROW = "%-6s %-7s %-8s %-14s %s"


def format_status(status):
    lines = ["bootloader backend: %s" % status["backend"]]
    lines.append(ROW % ("slot", "booted", "primary", "attempts left", "version"))
    for slot in sorted(status["slots"]):
        info = status["slots"][slot]
        booted = "*" if status["booted"] == slot else ""
        primary = "*" if status["primary"] == slot else ""
        lines.append(ROW % (slot, booted, primary, info["attempts_left"], info["version"] or "-"))
    if status.get("booted_error"):
        lines.append("booted slot unknown: %s" % status["booted_error"])
    return "\n".join(lines)


def cmd_status(args):
    cfg, boot = _open(args)
    status = collect_status(cfg, boot)
    if args.json:
        print(json.dumps(status, indent=1, sort_keys=True))
    else:
        print(format_status(status))
    return 0


def cmd_mark_good(args):
    cfg, boot = _open(args)
    slot = args.slot or boot.booted_slot()
    with StateLock(cfg.state_dir, "boot mark-good %s" % slot):
        boot.mark_good(slot)
        floor = SlotState(cfg.state_dir, boot).committed(slot)
    print(
        "slot %s marked good; primary is now %s; anti-rollback floor %d"
        % (slot, boot.primary_slot(), floor)
    )
    return 0


def check_fallback(cfg, boot, slot):
    """BootEnvError unless a slot other than `slot` is booted, or holds an installed system and
    has boot attempts left: marking `slot` bad would otherwise boot a slot with nothing in it."""
    records = SlotState(cfg.state_dir).load()["slots"]
    try:
        booted = boot.booted_slot()
    except BootEnvError:
        booted = None
    others = [s for s in boot.slots if s != slot]
    for other in others:
        if other == booted:
            return  # it runs: the boot script falls back to it even with its counter spent
        if records.get(other, {}).get("state") in INSTALLED and boot.attempts_left(other) > 0:
            return
    raise BootEnvError(
        "no other slot holds an installed system with boot attempts left to fall back to "
        "from %s (%s: %s)"
        % (slot, ", ".join(others), ", ".join(
            "%s, %d attempts" % (records.get(o, {}).get("state") or "never installed",
                                 boot.attempts_left(o)) for o in others)),
        hint="install a bundle into the other slot first (`charger-update install`); if it "
        "does hold a working system, `charger-update boot try %s` boots it once" % others[0],
    )  # fmt: skip


def cmd_mark_bad(args):
    cfg, boot = _open(args)
    with StateLock(cfg.state_dir, "boot mark-bad %s" % args.slot):
        check_fallback(cfg, boot, args.slot)
        boot.mark_bad(args.slot)
        SlotState(cfg.state_dir).mark(args.slot, "bad")
    print("slot %s marked bad; primary is now %s" % (args.slot, boot.primary_slot()))
    return 0


def cmd_try(args):
    cfg, boot = _open(args)
    with StateLock(cfg.state_dir, "boot try %s" % args.slot):
        boot.try_slot(args.slot, attempts=args.attempts)
    print(
        "slot %s will be tried next (%d attempt(s)); it falls back to %s unless marked good"
        % (args.slot, args.attempts, boot.other_slot(args.slot))
    )
    return 0
