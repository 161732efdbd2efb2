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
    return Daemon(cfg, boot, channel, stack, Trust.from_config(cfg), System(cfg.section("system")))


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
