"""A job or cancel is never lost to a power cut around its delivery (issue 18).

The agent runs as its own process against a real mosquitto and dies (os._exit: no clean
disconnect, as when the supply goes) at each point around a delivery: as paho receives it,
in the daemon's queue, once the journey has decided but before the journal write, right
after the journal write, right after the acknowledgement. Then it starts again on the same
state dir. Each time the job must end up accepted exactly once: redelivered by the broker
(the cut came before the acknowledgement, which follows the journal write) or already in
the journal. A seeded series adds cuts at random instants just after the publish.
"""

import itertools
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading

import pytest

from agent.frontends import channel as ch
from agent.frontends.mqtt_channel import MqttChannel
from hil.services.mosquitto import MessageLog, mosquitto
from tests.delivery.agent_process import POINTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = int(os.environ.get("CHARGER_CUT_SEED", "18"))
FAR = "2099-01-01T00:00:00Z"  # the job waits to download, so nothing after acceptance runs
T = 30
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with mosquitto(str(tmp_path_factory.mktemp("mosquitto-delivery"))) as b:
        yield b


class Charger:
    """One charger's agent process, its state dir, and the backend's view of it."""

    def __init__(self, tmp_path, broker):
        self.dir = tmp_path
        self.device_id = "cut-%d-%d" % (os.getpid(), next(_ids))
        (tmp_path / "boot.json").write_text(
            json.dumps({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
        )
        mqtt = '[mqtt]\nhost = "127.0.0.1"\nport = %d\nreconnect_max_s = 1.0\n' % broker.port
        (tmp_path / "agent.toml").write_text(
            '[device]\nid = "%s"\nmodel = "M"\nhardware_revision = "r"\n' % self.device_id
            + '[slots.A]\nrootfs = "a.img"\n[slots.B]\nrootfs = "b.img"\n'
            + '[bootloader]\nbackend = "simulated"\nstate = "boot.json"\nbooted = "A"\n'
            + '[state]\ndir = "data"\n'
            + mqtt
        )
        self.journal = tmp_path / "data" / "journal.json"
        self.statuses = MessageLog()
        self.backend = MqttChannel(broker.settings(), "backend-" + self.device_id, will=False)
        self.backend.subscribe_filter(self.backend.topic(ch.STATUS, self.device_id), self.statuses)
        self.backend.connect(10)
        assert self.backend.wait_subscribed(10)
        self.proc = None

    def start(self, cut=None):
        argv = [sys.executable, "-m", "tests.delivery.agent_process", str(self.dir / "agent.toml")]
        self.proc = subprocess.Popen(
            argv + ([cut] if cut else []), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=open(self.dir / "agent.log", "ab"), env=dict(os.environ, PYTHONPATH=ROOT),
        )  # fmt: skip
        if not select.select([self.proc.stdout], [], [], T)[0]:
            raise AssertionError("agent not ready within %ss" % T)
        assert self.proc.stdout.readline().strip() == b"ready", self.log()

    def died(self):
        """Wait for the cut: the process ends by os._exit(137)."""
        assert self.proc.wait(T) == 137, self.log()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(T)

    def kill(self):
        self.proc.kill()
        self.proc.wait(T)

    def send(self, suffix, payload):
        self.backend.publish_to(self.backend.topic(suffix, self.device_id), payload, wait_s=10)

    def record(self):
        return json.loads(self.journal.read_text()) if self.journal.exists() else None

    def count(self, job_id, status, reason=None):
        return len([p for _, p in self.statuses.messages if p.get("job_id") == job_id
                    and p.get("status") == status and p.get("reason") == reason])  # fmt: skip

    def wait_count(self, job_id, status, n, reason=None):
        self.statuses.wait_for(lambda t, p: self.count(job_id, status, reason) >= n, T)

    def log(self):
        return (self.dir / "agent.log").read_text()[-3000:]

    def close(self):
        self.stop()
        self.backend.stop()


@pytest.fixture
def charger(tmp_path, broker):
    c = Charger(tmp_path, broker)
    yield c
    c.close()


def job(job_id):
    return {"id": job_id, "url": "http://127.0.0.1:9/x.cub", "version": "1.1.0",
            "retrieve_at": FAR}  # fmt: skip


def accepted_once(charger, job_id):
    """After a restart: the job is in the journal, scheduled, accepted once, never refused."""
    charger.stop()
    record = charger.record()
    assert record["state"] == "download-scheduled" and record["job"]["id"] == job_id, record
    assert record["memory"].count(job_id) == 1
    refused = [p for _, p in charger.statuses.messages if p.get("reason") == "rejected"]
    assert not refused, refused


@pytest.mark.parametrize("point", POINTS)
def test_job_survives_a_power_cut_at_every_point_around_delivery(charger, point):
    charger.start("%s:job" % point)
    charger.send(ch.JOB, job("j-1"))
    charger.died()
    saved = charger.record() is not None and charger.record().get("job") is not None
    # The acknowledgement follows the journal write: before it, only the broker has the job.
    assert saved == (point in ("saved", "acked")), (point, charger.record())
    before = charger.count("j-1", "DownloadScheduled")
    charger.start()  # power back: the broker redelivers, or the journal resumes the job
    charger.wait_count("j-1", "DownloadScheduled", before + 1)
    accepted_once(charger, "j-1")


@pytest.mark.parametrize("point", POINTS)
def test_cancel_survives_a_power_cut_at_every_point_around_delivery(charger, point):
    charger.start()
    charger.send(ch.JOB, job("j-2"))
    charger.wait_count("j-2", "DownloadScheduled", 1)
    charger.stop()
    charger.start("%s:cancel" % point)
    charger.send(ch.CANCEL, {"job_id": "j-2"})
    charger.died()
    charger.start()
    charger.wait_count("j-2", "Idle", 1, reason="cancelled")
    charger.stop()
    record = charger.record()
    assert record["state"] in ("idle", "cancelled") and "j-2" in record["memory"], record


def test_jobs_survive_power_cuts_at_random_instants_after_the_publish(charger):
    """Seeded (CHARGER_CUT_SEED): the cut lands 0-40 ms after the broker took the job."""
    rng = random.Random(SEED)
    for n in range(4):
        job_id = "r-%d" % n
        delay = rng.uniform(0.0, 0.04)
        charger.start()
        charger.send(ch.JOB, job(job_id))
        threading.Event().wait(delay)  # the cut's instant: a chosen delay, not a wait for news
        charger.kill()
        before = charger.count(job_id, "DownloadScheduled")
        charger.start()
        charger.wait_count(job_id, "DownloadScheduled", before + 1)
        accepted_once(charger, job_id)
        # Clear the way for the next job: cancel this one (it is still only scheduled).
        charger.start()
        charger.send(ch.CANCEL, {"job_id": job_id})
        charger.wait_count(job_id, "Idle", 1, reason="cancelled")
        charger.stop()
