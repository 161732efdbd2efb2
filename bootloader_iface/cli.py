"""`charger-update boot status | mark-good [SLOT] | mark-bad SLOT | try SLOT [--attempts N]`.

Invariant: every action goes through the configured backend's contract (one env write each);
status reads only, and shows the booted slot as unknown rather than guessing when the kernel
command line does not name one.
"""

import json
import os

from agent import config as agent_config
from agent.core.errors import BootEnvError
from agent.state.atomic import read_json
from bootloader_iface import open_from_config


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
    _, boot = _open(args)
    slot = args.slot or boot.booted_slot()
    boot.mark_good(slot)
    print("slot %s marked good; primary is now %s" % (slot, boot.primary_slot()))
    return 0


def cmd_mark_bad(args):
    _, boot = _open(args)
    boot.mark_bad(args.slot)
    print("slot %s marked bad; primary is now %s" % (args.slot, boot.primary_slot()))
    return 0


def cmd_try(args):
    _, boot = _open(args)
    boot.try_slot(args.slot, attempts=args.attempts)
    print(
        "slot %s will be tried next (%d attempt(s)); it falls back to %s unless marked good"
        % (args.slot, args.attempts, boot.other_slot(args.slot))
    )
    return 0
