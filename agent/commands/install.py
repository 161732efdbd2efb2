"""`charger-update install SOURCE`: verify, stream into the inactive slot, read back, switch."""

import json
import sys

from agent import config as config_mod


def register(subparsers):
    p = subparsers.add_parser(
        "install",
        help="install a signed bundle into the inactive slot and boot it once on trial",
        description="Verify the bundle's signed manifest against the trusted root and this "
        "board (model, hardware revision, expiry, anti-rollback), stream every payload into "
        "the inactive slot, fsync and read it back against the signed sha256, and only then "
        "tell the bootloader to try that slot once. Nothing is switched if any step fails.",
    )
    p.add_argument("source", help="bundle: a path, file://, http:// or https:// URL")
    p.add_argument(
        "--no-switch", action="store_true",
        help="install and verify only; leave the boot order as it is",
    )  # fmt: skip
    p.add_argument("--attempts", type=int, default=1, help="boot attempts for the new slot")
    p.add_argument(
        "--plan", action="store_true",
        help="write nothing: verify the bundle's head and print how many bytes this charger "
        "would download (a format-2 bundle: only the blocks neither slot has)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.set_defaults(func=run)


def run(args):
    from agent.state.statedir import StateLock
    from agent.transfer.installer import install, without_readback
    from agent.transfer.progress import Progress
    from agent.trust.store import Trust
    from bootloader_iface import open_from_config

    cfg = config_mod.load(args.config)
    boot = open_from_config(cfg)
    if args.plan:
        return _plan(args, cfg, boot, Trust.from_config(cfg))
    done = install(
        args.source, cfg, boot, Trust.from_config(cfg, boot=boot),
        progress_factory=lambda total, label: Progress(total, label),
    )  # fmt: skip
    m = done.manifest
    unread = without_readback(m, cfg)
    checked = "read back OK"
    if unread:
        checked = "NOT read back: %s ([readback] in the config)" % ", ".join(unread)
    print(
        "installed %s (security version %d) into slot %s; %s"
        % (m.version, m.security_version, done.slot, checked)
    )
    if done.counters:
        c = done.counters
        print(
            "downloaded %d bytes for %d bytes of payload; blocks: %d fetched (%d of them in "
            "front frames), %d from the booted slot, %d from the inactive slot, %d zero"
            % (c["downloaded"], sum(p.installed_size for p in m.payloads),
               c["remote"] + c["front"], c["front"], c["booted"], c["inactive"], c["zero"])
        )  # fmt: skip
    if args.no_switch:
        print("boot order unchanged (--no-switch)")
        return 0
    with StateLock(cfg.state_dir, "switching to slot %s" % done.slot):
        boot.try_slot(done.slot, args.attempts)
    print(
        "slot %s will be tried on the next boot (%d attempt%s); reboot to start the trial"
        % (done.slot, args.attempts, "" if args.attempts == 1 else "s"),
        file=sys.stdout,
    )
    return 0


def _plan(args, cfg, boot, trust):
    from agent.transfer.delta import dry_run
    from agent.transfer.installer import check_envelope

    plan = dry_run(args.source, cfg, boot, lambda env: check_envelope(env, trust, cfg))
    if plan is None:
        print("%s is a format-1 bundle: an install downloads all of it" % args.source)
        return 0
    if args.json:
        print(json.dumps(plan, indent=1, sort_keys=True))
        return 0
    print(
        "%s: version %s, bundle %d bytes; this charger would download %d bytes (%.1f%%)"
        % (args.source, plan["version"], plan["bundle_bytes"], plan["download_bytes"],
           100.0 * plan["download_bytes"] / max(plan["bundle_bytes"], 1))
    )  # fmt: skip
    for row in plan["payloads"]:
        blocks = row.get("blocks")
        where = ""
        if blocks:
            where = (
                " (blocks: %d fetched in %d ranges, %d of them in %d front frames, %d booted"
                " slot, %d inactive slot, %d zero, %d repeated; block lists of %d of %d groups,"
                " %d bytes)"
                % (blocks["remote"] + blocks["front"], row["ranges"], blocks["front"],
                   row["frames"], blocks["booted"], blocks["inactive"], blocks["zero"],
                   blocks["repeated"], row["groups_fetched"], row["groups"], row["detail_bytes"])
            )  # fmt: skip
        print(
            "payload %s: %d of %d stored bytes%s"
            % (row["name"], row["fetch_bytes"], row["stored_size"], where)
        )
    print("head (header, signed manifest, group indexes): %d bytes" % plan["head_bytes"])
    return 0
