"""`charger-update install SOURCE`: verify, stream into the inactive slot, read back, switch."""

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
    p.set_defaults(func=run)


def run(args):
    from agent.state.statedir import StateLock
    from agent.transfer.installer import install
    from agent.transfer.progress import Progress
    from agent.trust.store import Trust
    from bootloader_iface import open_from_config

    cfg = config_mod.load(args.config)
    boot = open_from_config(cfg)
    done = install(
        args.source, cfg, boot, Trust.from_config(cfg, boot=boot),
        progress_factory=lambda total, label: Progress(total, label),
    )  # fmt: skip
    m = done.manifest
    print(
        "installed %s (security version %d) into slot %s; read back OK"
        % (m.version, m.security_version, done.slot)
    )
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
