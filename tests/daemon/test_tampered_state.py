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
    watchdog_interval_s = None

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


def test_healthy_boot_of_a_committed_slot_raises_the_floor(tmp_path):
    """#6: slots.json says A was committed with security version 5, but the floor stayed at
    3 (committed by an agent that did not raise it): the next healthy boot raises it, in
    the state dir and in the boot environment."""
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    record = {"slots": {"A": {"state": "good", "version": "1.5.0", "security_version": 5}},
              "security_version": 3}  # fmt: skip
    (tmp_path / "state" / "slots.json").write_text(json.dumps(record))
    d = Daemon(cfg, open_from_config(cfg), Channel(), FakeStack(), None, System())
    d.resume()
    assert json.loads((tmp_path / "boot.json").read_text())["CHARGER_SECURITY_FLOOR"] == "5"
    assert d.slots.load()["security_version"] == 5


def test_deleted_rotated_roots_are_reported_to_the_backend(tmp_path):
    """#8: the rotated root was deleted from the data partition: the daemon says so at start,
    in a status and in its inventory row, and refuses bundles until the root is re-applied."""
    from agent.trust.store import Trust
    from tests.bundle.factory import make_keys, make_root, root_envelope

    old_root, new_root = make_keys(2, tag="daemon-roots")
    make_root(tmp_path / "root.json", [old_root], make_keys(1, tag="daemon-rel"))
    cfg = config(tmp_path, trust={"root": "root.json"}, time={"sync_file": ""})
    boot = open_from_config(cfg)
    v2 = root_envelope([new_root], make_keys(1, tag="daemon-rel"), version=2,
                       signers=[old_root, new_root])  # fmt: skip
    Trust.from_config(cfg, boot=boot).update_root([v2])
    (tmp_path / "state" / "trusted-root.2.json").unlink()
    channel = Channel()
    d = Daemon(cfg, boot, channel, FakeStack(), Trust.from_config(cfg, boot=boot), System())
    channel.start()
    d.resume()
    status = channel.wait_for("update/status", 5, lambda m: m.get("reason") == "root-rollback")
    assert status and "older than version 2" in status["detail"]
    d.publish_inventory()
    row = channel.wait_for("update/inventory", 5)
    assert row["trust"]["root_version"] == 1 and row["trust"]["root_floor"] == 2
    assert "older than version 2" in row["trust"]["problem"]
