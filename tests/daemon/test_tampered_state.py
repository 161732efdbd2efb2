"""The daemon on a board whose state was damaged or tampered with (issue 11): it keeps
running, says what is wrong, and never lowers what it has promised to keep. In-memory channel
and stack fakes stand in for the broker and the charging stack (the real ones run in
test_daemon.py)."""

import json
import threading

from agent.config import Config
from agent.control.daemon import Daemon
from agent.frontends.channel import FakeChannel
from agent.station.charging import FakeStack
from bootloader_iface import open_from_config


def config(tmp_path, **sections):
    raw = {
        "device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
        "slots": {"A": {"rootfs": "a.img"}, "B": {"rootfs": "b.img"}},
        "bootloader": {"backend": "simulated", "state": "boot.json", "booted": "A"},
        "state": {"dir": "state"},
        "system": {"retry_after_failure_s": 0.2},
    }
    raw.update(sections)
    (tmp_path / "boot.json").write_text(
        json.dumps({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
    )
    return Config(raw, str(tmp_path / "agent.toml"))


class System:
    def reboot(self):
        return True

    def pet(self):
        pass

    def local_offset_s(self):
        return 0


class Channel(FakeChannel):
    """FakeChannel that lets a test wait for the next message on a topic."""

    def __init__(self):
        FakeChannel.__init__(self, device_id="cp-1")
        self.arrived = threading.Condition()

    def publish_to(self, topic, payload, qos=1, retain=False):
        FakeChannel.publish_to(self, topic, payload, qos, retain)
        with self.arrived:
            self.arrived.notify_all()

    def wait_for(self, suffix, timeout, where=lambda m: True):
        """The first message on `suffix` that `where` accepts, or None after timeout."""
        with self.arrived:
            self.arrived.wait_for(lambda: any(where(m) for m in self.messages(suffix)), timeout)
        found = [m for m in self.messages(suffix) if where(m)]
        return found[0] if found else None


def start(d):
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    return loop


def test_journal_replaced_by_a_directory_never_ends_the_daemon_loop(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "state" / "journal.json").mkdir(parents=True)
    channel = Channel()
    d = Daemon(cfg, open_from_config(cfg), channel, FakeStack(), None, System())
    loop = start(d)
    try:
        assert channel.wait_for("update/inventory", 10), "the loop never got going"
        # A job after the damage is still taken: the loop is alive and idle.
        channel.inject("update/job", {"job_id": "j1", "url": "ftp://x/b.cub", "version": "1"})
        assert channel.wait_for("update/status", 10, lambda m: m.get("reason") == "malformed-job")
        assert loop.is_alive()
    finally:
        d.stop()
        loop.join(10)
    assert (tmp_path / "state" / "journal.json.corrupt-0").is_dir()
