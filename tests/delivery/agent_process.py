"""The agent daemon as its own process, for the delivery power-cut test (test_delivery_cuts.py).

`python -m tests.delivery.agent_process CONFIG [CUT]` runs the real Daemon with the real
MqttChannel against the test's broker; only the charging stack (a FakeStack: the job is
scheduled far ahead and never reaches it) and the system edge are stand-ins. CUT names the
point at which the process dies with os._exit, as a power cut would take it: no clean
disconnect, nothing written after that instant (the journal is fsynced, so what was saved
stays saved). Prints "ready" once its subscriptions are acknowledged by the broker.
"""

import os
import sys
import threading

from agent.config import load
from agent.control import daemon as daemon_mod
from agent.frontends import channel as ch
from agent.frontends import mqtt_channel
from agent.frontends.channel import settings_from_config
from agent.state import journal as journal_mod
from agent.station.charging import FakeStack
from bootloader_iface import open_from_config

POINTS = ("arrived", "queued", "accepted", "saved", "acked")


def cut():
    sys.stdout.flush()
    os._exit(137)


class System:
    watchdog_interval_s = None  # no watchdog watches this process

    def reboot(self):
        return True

    def pet(self):
        pass

    def local_offset_s(self):
        return 0

    def boot_facts(self):
        return {"reset": "power-on", "id": "boot-%d" % os.getpid()}


def arm(point, kind):
    """Die at `point` for the first message whose topic ends with update/<kind>."""
    suffix = ch.JOB if kind == "job" else ch.CANCEL
    hit = {"armed": False}

    if point == "arrived":  # paho has the PUBLISH; nothing handled or acknowledged yet
        original = mqtt_channel.MqttChannel._on_message

        def on_message(self, client, userdata, message):
            if message.topic.endswith(suffix):
                cut()
            original(self, client, userdata, message)

        mqtt_channel.MqttChannel._on_message = on_message
        return
    if point == "queued":  # in the daemon's queue, not offered to the journey yet
        original = daemon_mod.Daemon.dispatch

        def dispatch(self, item):
            if item[0] == kind:
                cut()
            original(self, item)

        daemon_mod.Daemon.dispatch = dispatch
        return
    original_dispatch = daemon_mod.Daemon.dispatch

    def dispatch(self, item):
        hit["armed"] = item[0] == kind
        try:
            original_dispatch(self, item)
        finally:
            hit["armed"] = False

    daemon_mod.Daemon.dispatch = dispatch
    if point in ("accepted", "saved"):  # the journey decided; just before / after the save
        original_save = journal_mod.Journal.save

        def save(self, journey):
            if hit["armed"] and point == "accepted":
                cut()
            original_save(self, journey)
            if hit["armed"] and point == "saved":
                cut()

        journal_mod.Journal.save = save
        return
    if point == "acked":  # the PUBACK is handed to paho (it may or may not be on the wire)
        original_ack = ch.Ack.__call__

        def ack(self):
            original_ack(self)
            if hit["armed"]:
                cut()

        ch.Ack.__call__ = ack
        return
    raise SystemExit("unknown cut point %r" % point)


def main(argv):
    cfg = load(argv[0])
    if len(argv) > 1:
        arm(*argv[1].split(":"))
    settings, device_id = settings_from_config(cfg)
    channel = mqtt_channel.MqttChannel(settings, device_id)
    daemon = daemon_mod.Daemon(cfg, open_from_config(cfg), channel, FakeStack(), None, System())

    def ready():
        channel.wait_connected(30)
        if channel.wait_subscribed(30):
            print("ready", flush=True)

    threading.Thread(target=ready, daemon=True).start()
    daemon.run()


if __name__ == "__main__":
    main(sys.argv[1:])
