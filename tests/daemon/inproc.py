"""The daemon in-process on a file-backed board, for attacks on its job handling.

What is real: the daemon, its journal and slot state, file slots, the simulated bootloader
(the same RAUC-style scheme as uboot-rauc), signed bundles served by the HTTP test server.
What is faked, because it cannot run in-process: the MQTT broker (FakeChannel, same decode
path as MqttChannel), the charging stack (FakeStack) and the reboot (an event; the next boot
is a new Daemon after `power_on()`). The whole-process daemon runs in test_daemon.py.
"""

import os
import threading

import tomli_w

from agent import config as config_mod
from agent.control.daemon import Daemon
from agent.frontends import channel as ch
from agent.frontends.channel import FakeChannel
from agent.state.slotstate import SlotState
from agent.station.charging import FakeStack
from agent.trust.store import Trust
from bootloader_iface import open_from_config
from tests.bundle.factory import HW, MODEL


class WatchedChannel(FakeChannel):
    """FakeChannel that lets a test wait for a status instead of polling for it."""

    def __init__(self, **kw):
        FakeChannel.__init__(self, **kw)
        self.changed = threading.Condition()

    def publish_to(self, topic, payload, qos=1, retain=False):
        with self.changed:
            FakeChannel.publish_to(self, topic, payload, qos, retain)
            self.changed.notify_all()

    def statuses(self):
        with self.changed:
            return list(self.messages(ch.STATUS))

    def wait_status(self, predicate, timeout=30):
        """The first status for which predicate(status) holds; AssertionError on timeout."""

        def found():
            return [m for m in self.messages(ch.STATUS) if predicate(m)]

        with self.changed:
            if not self.changed.wait_for(found, timeout):
                raise AssertionError("no such status; saw %r" % self.messages(ch.STATUS))
            return found()[0]


class Reboots:
    """The System port: reboot() only records that the agent asked for one."""

    watchdog_interval_s = None  # no watchdog to pet

    def __init__(self):
        self.rebooted = threading.Event()

    def reboot(self):
        self.rebooted.set()
        return True

    def pet(self):
        pass

    def local_offset_s(self):
        return 0


class Board:
    """Slots A/B as files, booted A holding 1.0.0 (security version 1), agent.toml next to
    them. `config` entries are merged into the TOML (e.g. {"trial": {...}})."""

    def __init__(self, directory, root_path, config=None):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        raw = {
            "device": {"id": "cp-1", "model": MODEL, "hardware_revision": HW},
            "slots": {"A": {"rootfs": "a.img"}, "B": {"rootfs": "b.img"}},
            "bootloader": {"backend": "simulated", "state": "boot.json"},
            "trust": {"root": str(root_path)},
            "state": {"dir": "state"},
            "trial": {"window_s": 20, "checks": ["communication"], "alarms": {"observe_s": 0.1}},
            "download": {"retries": 0, "backoff_s": 0.01, "timeout_s": 5.0},
        }
        for section, table in (config or {}).items():
            raw.setdefault(section, {}).update(table)
        self.config_path = os.path.join(self.dir, "agent.toml")
        with open(self.config_path, "wb") as f:
            tomli_w.dump(raw, f)
        for slot in ("a", "b"):
            with open(os.path.join(self.dir, slot + ".img"), "wb") as f:
                f.write(b"firmware of slot " + slot.encode())
        self.boot = open_from_config(self.cfg())
        self.boot.env.write({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
        self.boot.set_booted("A")
        SlotState(self.cfg().state_dir).set_good("A", "1.0.0", 1)
        self.daemon = None
        self.thread = None

    def cfg(self):
        return config_mod.load(self.config_path)

    def start(self):
        """Boot the agent: a new Daemon (as after a reboot), running in a thread."""
        cfg = self.cfg()
        self.channel = WatchedChannel(device_id="cp-1")
        self.system = Reboots()
        self.daemon = Daemon(cfg, open_from_config(cfg), self.channel, FakeStack(),
                             Trust.from_config(cfg), self.system)  # fmt: skip
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()
            self.thread.join(10)
            self.daemon = None

    def reboot(self):
        """The agent asked for a reboot: stop it, run the boot ROM, start the next agent."""
        assert self.system.rebooted.wait(30), "the agent never asked for a reboot"
        self.stop()
        self.boot.power_on()
        return self.start()
