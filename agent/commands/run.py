"""`charger-update run`: the daemon, as systemd starts it on the charger."""

import logging
import signal

from agent import config as config_mod
from agent.commands._text import printable_lines


def register(subparsers):
    p = subparsers.add_parser(
        "run",
        help="run the update agent daemon (MQTT jobs, trial checks, commit or rollback)",
        description="Run the agent until SIGTERM. It resumes any journey saved in the state "
        "dir, runs the trial after booting a new slot, and takes jobs from "
        "{prefix}/{device}/update/job (see docs/mqtt-api.md).",
    )
    p.set_defaults(func=run)


def build(cfg):
    """The daemon with the real adapters the config names."""
    from agent.control.daemon import Daemon
    from agent.control.system import System
    from agent.frontends.channel import settings_from_config
    from agent.frontends.mqtt_channel import MqttChannel
    from agent.station.charging import SocketStack
    from agent.trust.store import Trust
    from bootloader_iface import open_from_config

    boot = open_from_config(cfg)
    stack_opts = cfg.section("charging_stack")
    stack = SocketStack(cfg.resolve(stack_opts.get("socket", "/run/charger/stack.sock")))
    settings, device_id = settings_from_config(cfg)
    channel = MqttChannel(settings, device_id, online_info={"model": cfg.device["model"]})
    system_opts = dict(cfg.section("system"))
    if cfg.bootloader.get("cmdline"):  # where the booted slot is read, the reset cause too
        system_opts.setdefault("cmdline", cfg.bootloader["cmdline"])
    system = System(system_opts, cfg.resolve)
    # Root signatures are checked at the first job, not at start: an idle daemon then never
    # loads `cryptography` (docs/transfer.md, idle figures).
    trust = Trust.from_config(cfg, boot=boot, lazy=True)
    return Daemon(cfg, boot, channel, stack, trust, system,
                  frontends=frontends_from_config(cfg))  # fmt: skip


def frontends_from_config(cfg):
    """The front-ends next to MQTT the config names: [local_api] (an OEM's own stack over a
    Unix socket), [everest] (EVerest's system_API over MQTT); docs/ocpp.md."""
    frontends = []
    if cfg.raw.get("local_api") is not None:
        from agent.frontends.local_api import LocalApi

        frontends.append(LocalApi(cfg))
    if cfg.raw.get("everest") is not None:
        from agent.frontends.everest import EverestSystem

        frontends.append(EverestSystem(cfg))
    return frontends


class InertFormatter(logging.Formatter):
    """Log lines quote job ids, URLs and servers' answers: no terminal escapes get through."""

    def format(self, record):
        return printable_lines(logging.Formatter.format(self, record))


def run(args):
    handler = logging.StreamHandler()
    handler.setFormatter(InertFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    cfg = config_mod.load(args.config)
    daemon = build(cfg)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    daemon.run()
    return 0
