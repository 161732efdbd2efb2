"""Daemon pieces that need no board: concurrent reporting, start-up checks, healthy-boot
decisions. In-memory channel and stack fakes stand in for the broker and the charging stack
(the real ones run in test_daemon.py)."""

import json
import threading

import pytest

from agent.config import Config
from agent.control.daemon import Daemon
from agent.control.reporting import Reporter
from agent.core.errors import ConfigError
from agent.frontends.channel import FakeChannel
from agent.state.history import History
from agent.state.slotstate import SlotState
from agent.station.charging import FakeStack
from bootloader_iface import open_from_config


def config(tmp_path, trial=None):
    raw = {
        "device": {"id": "cp-1", "model": "M", "hardware_revision": "r"},
        "slots": {"A": {"rootfs": "a.img"}, "B": {"rootfs": "b.img"}},
        "bootloader": {"backend": "simulated", "state": "boot.json", "booted": "B"},
        "state": {"dir": "state"},
        "trial": trial or {},
    }
    (tmp_path / "boot.json").write_text(
        json.dumps({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
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


def daemon(cfg):
    return Daemon(cfg, open_from_config(cfg), FakeChannel(device_id="cp-1"), FakeStack(), None,
                  System())  # fmt: skip


def test_concurrent_status_reports_get_unique_sequence_numbers(tmp_path):
    cfg = config(tmp_path)
    channel = FakeChannel(device_id="cp-1")
    channel.start()
    reporter = Reporter(cfg, channel, open_from_config(cfg), History(str(tmp_path)),
                        SlotState(str(tmp_path)), lambda: 0)  # fmt: skip

    def burst():
        for _ in range(100):
            reporter.status("Installing", {"job_id": "j"})

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [m["seq"] for m in channel.messages("update/status")]
    assert len(seqs) == 400 and len(set(seqs)) == 400
    assert seqs == sorted(seqs)  # published in sequence order


def test_misnamed_trial_check_is_a_config_error_at_start(tmp_path):
    with pytest.raises(ConfigError, match="no-such-check"):
        daemon(config(tmp_path, {"checks": ["communication", "no-such-check"]}))


def test_slot_booted_without_a_trial_is_not_marked_good(tmp_path):
    """`charger-update install` then a manual reboot: B boots on its one attempt; the daemon
    must not commit it blindly (its attempt runs out and the board falls back)."""
    cfg = config(tmp_path)
    SlotState(cfg.state_dir).set_good("A", "1.0.0")
    SlotState(cfg.state_dir).begin_write("B", "1.1.0")
    d = daemon(cfg)
    d.resume()
    assert d.boot.attempts_left("B") == 0  # not refilled: no mark_good


def test_healthy_boot_of_a_good_slot_refills_its_attempts(tmp_path):
    cfg = config(tmp_path)
    SlotState(cfg.state_dir).set_good("B", "1.0.0")
    d = daemon(cfg)
    d.resume()
    assert d.boot.attempts_left("B") == 3


def test_corrupt_history_never_stops_reporting(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "history.json").write_text("{not json")
    d = daemon(cfg)
    d.channel.start()
    d.report("Idle", {"job_id": None})
    assert d.channel.messages("update/status")[0]["seq"] > 0
    assert (tmp_path / "state" / "history.json.corrupt").exists()


class RecordingSystem(System):
    def __init__(self):
        self.rebooted = threading.Event()

    def reboot(self):
        self.rebooted.set()
        return True


def test_trial_window_expires_while_a_check_hangs(tmp_path):
    from agent.core import lifecycle as lc
    from agent.core.jobs import parse_job
    from agent.state.journal import Journal

    cfg = config(tmp_path, {"window_s": 1, "checks": ["tests.daemon.plugins:Hangs"]})
    SlotState(cfg.state_dir).set_good("A", "1.0.0")
    system = RecordingSystem()
    d = Daemon(cfg, open_from_config(cfg), FakeChannel(device_id="cp-1"), FakeStack(), None,
               system)  # fmt: skip
    # The journal as the agent left it just before rebooting into B for the trial.
    job = parse_job(b'{"id": "j1", "url": "http://x/b.cub", "version": "1.1.0"}', cfg.device)
    journey = Journal(d.journal.path).load(d.policy)
    journey.offer(job, 0, "A", "B", 0.5)
    journey.state = lc.REBOOTING
    (tmp_path / "state").mkdir(exist_ok=True)
    d.journal.save(journey)
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    try:
        assert system.rebooted.wait(30), "the hung trial never ended"
    finally:
        d.stop()
        loop.join(10)
    statuses = [m["status"] for m in d.channel.messages("update/status")]
    assert "TrialRunning" in statuses
    assert d.journal.load(d.policy).state == lc.ROLLED_BACK
    assert d.boot.attempts_left("B") == 0


def test_daemon_config_resolves_mqtt_tls_paths_against_the_config_file(tmp_path):
    from agent import config as config_mod
    from agent.commands.run import build
    from tests.bundle.factory import make_root

    make_root(str(tmp_path / "root.json"))
    (tmp_path / "agent.toml").write_text(
        '[device]\nid = "cp-1"\nmodel = "M"\nhardware_revision = "r"\n'
        '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
        '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\nbooted = "A"\n'
        '[trust]\nroot = "root.json"\n[state]\ndir = "state"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntls = { ca_file = "pki/ca.pem", cert_file = "pki/cp.pem", '
        'key_file = "pki/cp.key" }\n'
    )
    d = build(config_mod.load(str(tmp_path / "agent.toml")))
    assert d.channel.settings["tls"]["ca_file"] == str(tmp_path / "pki" / "ca.pem")


def test_job_and_cancel_are_acknowledged_only_after_the_journal_write(tmp_path):
    d = daemon(config(tmp_path))
    d.subscribe()
    d.resume()
    saved_at_ack = []

    def deliver(suffix, payload):
        ack = d.channel.inject(suffix, payload)
        assert not ack.done  # the broker still holds it while it waits in the queue
        kind, payload, send = d.events.get_nowait()
        d.dispatch((kind, payload, lambda: (saved_at_ack.append(d.journal.load()), send())))
        assert ack.done

    job = {"id": "j-1", "url": "http://127.0.0.1:9/x.cub", "version": "2",
           "retrieve_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    deliver("update/job", job)
    assert saved_at_ack[0].job.id == "j-1"
    deliver("update/cancel", {"job_id": "j-1"})
    assert saved_at_ack[1].state == "cancelled"
    deliver("update/job", {"id": "bad"})  # refused: acknowledged all the same, with a status
    assert d.channel.messages("update/status")[-1]["reason"] == "malformed-job"


@pytest.mark.parametrize("attempts", [0, 10, "3", 2.5, True])
def test_bad_trial_attempts_is_a_config_error_at_start(tmp_path, attempts):
    cfg = config(tmp_path)
    cfg.bootloader["trial_attempts"] = attempts
    with pytest.raises(ConfigError, match="trial_attempts"):
        daemon(cfg)


def test_trial_attempts_reach_the_bootloader(tmp_path):
    cfg = config(tmp_path)
    assert daemon(cfg).trial_attempts == 3  # the default: a power cut in a trial resumes it
    cfg.bootloader["trial_attempts"] = 5
    d = daemon(cfg)
    d.boot.mark_good("B")
    d.do_try_slot("A")
    assert d.boot.attempts_left("A") == 5


def test_reset_cause_comes_from_the_command_line_else_the_watchdog_else_unknown(tmp_path):
    from agent.control.system import System as RealSystem

    cmdline, status, boot_id = tmp_path / "cmdline", tmp_path / "bootstatus", tmp_path / "id"
    system = RealSystem({"cmdline": "cmdline", "watchdog_bootstatus": "bootstatus",
                         "boot_id_file": "id"}, lambda p: str(tmp_path / p))  # fmt: skip
    cmdline.write_text("console=ttyS0 charger.slot=B charger.reset=POR\n")
    boot_id.write_text("6c1f\n")
    assert system.boot_facts() == {"reset": "power-on", "id": "6c1f"}
    cmdline.write_text("console=ttyS0 androidboot.bootreason=kernel_panic\n")
    assert system.reset_cause() == "panic"
    cmdline.write_text("console=ttyS0 charger.slot=B\n")
    status.write_text("32\n")  # WDIOF_CARDRESET: the watchdog reset the board
    assert system.reset_cause() == "watchdog"
    status.write_text("0\n")  # not the watchdog, but nothing says what else: never a guess
    assert system.reset_cause() == "unknown"
    cmdline.write_text("charger.reset=gremlins\n")
    assert system.reset_cause() == "unknown"
    # The script's word wins over the watchdog's; a word it does not know defers to it.
    status.write_text("32\n")
    assert system.reset_cause() == "watchdog"
    cmdline.write_text("charger.reset=\n")  # a script that passed an unset charger_reset
    assert system.reset_cause() == "watchdog"
    cmdline.write_text("charger.reset=power-on\n")
    assert system.reset_cause() == "power-on"


# -- an idle agent sleeps until something happens (issue 12) ------------------------------------


class WatchedChannel(FakeChannel):
    """A FakeChannel that can drop and regain its broker, and lets a test wait for a topic."""

    def __init__(self, **kw):
        FakeChannel.__init__(self, **kw)
        self.connections = 0
        self.published_event = threading.Condition()

    def start(self):
        FakeChannel.start(self)
        self.reconnect()

    def reconnect(self):
        self.connections += 1
        if self.on_connected is not None:
            self.on_connected()

    def publish_to(self, topic, payload, qos=1, retain=False):
        with self.published_event:
            FakeChannel.publish_to(self, topic, payload, qos, retain)
            self.published_event.notify_all()

    def wait_for(self, suffix, count, timeout=10):
        with self.published_event:
            return self.published_event.wait_for(
                lambda: len(self.messages(suffix)) >= count, timeout
            )


def running(tmp_path, system=None):
    cfg = config(tmp_path)
    SlotState(cfg.state_dir).set_good("B", "1.0.0")
    d = Daemon(cfg, open_from_config(cfg), WatchedChannel(device_id="cp-1"), FakeStack(), None,
               system or System())  # fmt: skip
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    assert d.channel.wait_for("update/inventory", 1), "the loop never published its inventory"
    return d, loop


def test_idle_loop_sleeps_until_an_event_instead_of_polling(tmp_path):
    d, loop = running(tmp_path)
    try:
        # Nothing due, no watchdog: the loop would sleep for as long as nothing happens.
        assert d._timeout() >= 600
        d.wake_at = d.clock() + 2.0  # a journey's wait: the loop wakes right then
        assert 1.0 < d._timeout() <= 2.0
    finally:
        d.stop()
        loop.join(10)


def test_stop_wakes_an_idle_loop_at_once(tmp_path):
    d, loop = running(tmp_path)
    d.stop()
    loop.join(5)  # the loop sleeps for an hour when idle: only the wake-up can end it this soon
    assert not loop.is_alive()


def test_reconnect_republishes_the_inventory_without_polling(tmp_path):
    d, loop = running(tmp_path)
    try:
        d.channel.reconnect()  # a broker restarted without persistence lost the retained row
        assert d.channel.wait_for("update/inventory", 2), "no inventory after the reconnect"
    finally:
        d.stop()
        loop.join(10)


def test_watchdog_is_petted_at_half_its_timeout_and_caps_the_sleep(tmp_path):
    from agent.control.system import watchdog_interval_s

    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    # systemd names the watched process: another one's watchdog is not ours to pet.
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, pid=42) is None

    class Watched(System):
        watchdog_interval_s = 0.2

        def __init__(self):
            self.pets = threading.Semaphore(0)

        def pet(self):
            self.pets.release()

    system = Watched()
    d, loop = running(tmp_path, system)
    try:
        assert d._timeout() <= 0.2
        for _ in range(3):  # an idle loop keeps petting on its own, with nothing else to do
            assert system.pets.acquire(timeout=5)
    finally:
        d.stop()
        loop.join(10)


def test_front_end_request_is_answered_even_when_replacing_the_job_fails_on_the_slot(tmp_path):
    """A new OCPP request while an install runs: the journal takes the new job first, then
    the old slot is marked bad, which needs the state lock. When that fails (the lock held),
    the stack still gets the answer the journal holds, at once, and the loop recovers."""
    from agent.core import lifecycle as lc
    from agent.core.errors import StateBusy
    from agent.core.jobs import job_from_request
    from agent.state.statedir import StateLock

    cfg = config(tmp_path)
    d = daemon(cfg)
    d.resume()
    old = job_from_request({"id": "ocpp-1-a", "url": "http://127.0.0.1:9/x.cub"}, cfg.device)
    d.journey.offer(old, 0, "B", "A", 0.5)
    d.journey.state = lc.INSTALLING  # the old job writes slot A
    d.journey.data["slot_touched"] = True
    answers = []
    request = {"id": "ocpp-2-b", "url": "http://127.0.0.1:9/y.cub",
               "retrieve_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    with StateLock(cfg.state_dir, "someone else writing"):
        with pytest.raises(StateBusy):
            d.take_request(request, answers.append)
    assert answers == [("accepted-canceled", "ocpp-2-b")]
    assert d.journal.load(d.policy).job.id == "ocpp-2-b"
    # Nothing runs: a refused request is answered before its actions too.
    d.take_request({"id": "x", "url": "ftp://nowhere"}, answers.append)
    assert answers[-1][0] == "rejected"
