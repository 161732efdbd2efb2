"""A fleet of simulated chargers in one process, speaking the agent's MQTT API for real.

Each simulated charger has its own topics and identity below {prefix}/{device}/ and sends
exactly what an agent sends (built by agent/core/messages.py): a retained inventory and online
row, statuses with a per-device seq, health rounds. It parses jobs with the agent's own
parser and times them with the agent's own schedule (install_at, window in its site's local
time, jitter, never during a charging session). Thousands of chargers share a few MQTT
connections (`per_connection`, default 500): one connection subscribes to the job and cancel
topics of its chargers and publishes on their topics, so the broker sees every charger's own
topics and payloads without one socket per charger. The one thing a shared connection cannot
carry is a per-charger last will: a charger going offline publishes its offline row itself.

Profiles (combine with "+", e.g. "slow-link+fail-trial:alarms"): good; fail-trial:CHECK
(rolls back, cause check-failed); crash (the new slot resets by watchdog in its trial, cause
crash); regress (regression while soaking); silent-after-reboot; offline; charging (a session
defers the install); slow-link; power-loss (power cuts use up the trial's boot attempts, cause
power-loss: not the release's fault); unexplained-resets (resets the board cannot explain,
cause unexplained-resets); delta (installs by delta: its Installing statuses carry
`downloaded`, DELTA_SHARE of `payload_bytes`, as a format-2 install reports them).
"""

import heapq
import itertools
import json
import os
import random
import threading
import time

from agent.core import jobs as agent_jobs
from agent.core import messages as m
from agent.core import schedule
from fleet.transport import Connection

TIMING = {
    "download_s": 0.3,
    "slow_download_s": 5.0,
    "install_s": 0.3,
    "reboot_s": 0.3,
    "trial_s": 0.3,
    "regress_after_s": 0.5,
    "session_s": 2.0,
}
PROFILES = (
    "good",
    "regress",
    "silent-after-reboot",
    "offline",
    "charging",
    "slow-link",
    "power-loss",
    "unexplained-resets",
    "crash",
    "delta",
)
CHECKS = ("communication", "charging-session", "alarms")
PAYLOAD_BYTES = 64 << 20  # what a "delta" charger installs, and fetches DELTA_SHARE of
DELTA_SHARE = 0.02


class SimCharger:
    def __init__(
        self,
        device_id,
        model,
        hardware_revision,
        version,
        site="",
        site_type="",
        group="",
        profile="good",
        local_offset_s=0,
    ):
        self.id, self.model, self.hw = device_id, model, hardware_revision
        self.version, self.site, self.site_type, self.group = version, site, site_type, group
        self.profile = profile  # one profile, or several joined by "+"
        self.traits = set(profile.split("+"))
        self.local_offset_s = local_offset_s
        self.seq = 0
        self.rollbacks = []
        self.last_job = None
        self.memory = agent_jobs.JobMemory()
        self.job = None  # the job in progress
        self.stage = None
        self.jobs = []  # job ids received (audit)
        self.installs = []  # (job id, epoch when Installing was reported)
        self.session_until = 0.0

    def inventory(self, now):
        device = {
            "id": self.id,
            "model": self.model,
            "hardware_revision": self.hw,
            "group": self.group,
            "site": self.site,
            "site_type": self.site_type,
        }
        boot = {
            "backend": "sim",
            "booted": "A",
            "primary": "A",
            "slots": {"A": {"attempts_left": 3}, "B": {"attempts_left": 3}},
        }
        slots = {"A": {"version": self.version, "state": "good"}, "B": {"version": None}}
        # A charger without MCUs reports its one component, the root file system.
        return m.inventory_message(
            device, boot, slots, self.last_job, list(self.rollbacks), now,
            components={"rootfs": self.version},
        )  # fmt: skip


class Simulator:
    def __init__(
        self,
        settings,
        chargers,
        prefix=m.DEFAULT_PREFIX,
        per_connection=500,
        timing=None,
        clock=time.time,
        seed=1,
        profile_for=None,
    ):
        self.settings, self.prefix, self.clock = settings, prefix, clock
        self.timing = dict(TIMING, **(timing or {}))
        self.chargers = {c.id: c for c in chargers}
        self.rng = random.Random(seed)
        self.run_id = os.urandom(3).hex()
        self.conns, self.conn_of = [], {}
        ids = sorted(self.chargers)
        for i in range(0, len(ids), per_connection):
            conn = Connection(
                settings,
                "sim-%s-%d" % (self.run_id, i // per_connection),
                self._on_message,
                max_inflight=5000,
            )
            for device in ids[i : i + per_connection]:
                conn.subscribe(m.topic(prefix, device, m.JOB))
                conn.subscribe(m.topic(prefix, device, m.CANCEL))
                self.conn_of[device] = conn
            self.conns.append(conn)
        self._heap, self._n = [], itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="fleet-sim", daemon=True)
        self.published = 0
        # profile_for(charger, job) -> profile for this job (a release that fails on one
        # revision only); default: the charger's own profile.
        self.profile_for = profile_for

    # -- life ----------------------------------------------------------------------------------

    def start(self, timeout=30.0):
        for conn in self.conns:
            conn.start(timeout)
        self._thread.start()
        now = self.clock()
        for c in self.chargers.values():
            self._publish(c, m.INVENTORY, c.inventory(now), retain=True)
            online = "offline" not in c.traits
            self._publish(c, m.ONLINE, m.online_message(c.id, online, now, c.version), True)
        return self

    def stop(self):
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(10)
        for conn in self.conns:
            conn.stop()

    def clear_retained(self):
        """Remove the retained rows (a test's broker is shared by later tests)."""
        for c in self.chargers.values():
            for suffix in m.RETAINED:
                self.conn_of[c.id].publish(m.topic(self.prefix, c.id, suffix), b"", retain=True)

    def wait_idle(self, timeout):
        """True once every publish so far reached the broker."""
        deadline = time.monotonic() + timeout
        for conn in self.conns:
            while conn.client.want_write() or conn.client._out_messages:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)  # polling paho's queue; no event exposes it
        return True

    # -- plumbing ------------------------------------------------------------------------------

    def _publish(self, c, suffix, payload, retain=False):
        self.conn_of[c.id].publish(m.topic(self.prefix, c.id, suffix), m.encode(payload), 1, retain)
        self.published += 1

    def _status(self, c, status, **info):
        c.seq += 1
        info = {k: v for k, v in info.items() if v is not None}
        if c.job is not None:
            info.setdefault("job_id", c.job.id)
            info.setdefault("version", c.job.version)
        self._publish(c, m.STATUS, m.status_message(status, info, c.seq, self.clock()))
        if status == m.INSTALLING:
            c.installs.append((info.get("job_id"), self.clock()))

    def _at(self, when, device, action, *args):
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._n), device, action, args))
            self._cond.notify()

    def _loop(self):
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > self.clock()):
                    wait = self._heap[0][0] - self.clock() if self._heap else None
                    self._cond.wait(wait)
                if self._stop:
                    return
                _, _, device, action, args = heapq.heappop(self._heap)
            try:
                getattr(self, "_do_" + action)(self.chargers[device], *args)
            except Exception:  # one charger's bug must not stop the fleet
                import logging

                logging.getLogger("charger-fleet").exception("sim %s %s", device, action)

    def _on_message(self, topic, payload, mid, qos):
        device, suffix = m.split_topic(self.prefix, topic)
        if device in self.chargers:
            self._at(0, device, "job" if suffix == m.JOB else "cancel", bytes(payload))

    # -- the journey ---------------------------------------------------------------------------

    def _do_job(self, c, raw):
        if "offline" in c.traits:
            return
        try:
            job = agent_jobs.parse_job(raw, {"model": c.model})
        except agent_jobs.WrongModel as e:
            return self._status(c, m.IDLE, reason=m.REASON_WRONG_MODEL, detail=str(e))
        except agent_jobs.MalformedJob as e:
            return self._status(c, m.IDLE, reason=m.REASON_MALFORMED_JOB, detail=str(e))
        if c.memory.seen(job.id):
            return  # a repeat (QoS 1 or a controller's re-send): the agent ignores it
        c.memory.remember(job.id)
        c.jobs.append(job.id)
        if c.job is not None:
            return self._status(
                c,
                m.IDLE,
                job_id=job.id,
                reason=m.REASON_REJECTED,
                detail="another job is in progress",
            )
        c.job, c.stage, c.rng = job, "download", self.rng.random()
        if self.profile_for is not None:
            c.jt = set(self.profile_for(c, job).split("+"))
        else:
            c.jt = c.traits
        c.accepted = self.clock()
        if "charging" in c.jt:
            c.session_until = self.clock() + self.timing["session_s"]
        self._status(c, m.DOWNLOAD_SCHEDULED)
        self._do_tick(c, job.id)

    def _do_cancel(self, c, raw):
        try:
            job_id = json.loads(raw).get("job_id")
        except ValueError:
            return
        if c.job is None or c.job.id != job_id:
            return
        if c.stage in ("download", "downloading", "install-wait"):
            c.job, c.stage = None, None
            c.seq += 1
            msg = m.status_message(
                m.IDLE, {"job_id": job_id, "reason": m.REASON_CANCELLED}, c.seq, self.clock()
            )
            self._publish(c, m.STATUS, msg)
        else:
            self._status(
                c,
                m.IDLE,
                reason=m.REASON_REJECTED,
                detail="cannot cancel: installation has started",
            )

    def _do_tick(self, c, job_id):
        """Ask the agent's schedule what to do now, as the daemon does."""
        if c.job is None or c.job.id != job_id:
            return
        now = self.clock()
        if c.stage == "download":
            d = schedule.decide(
                now, c.local_offset_s, c.job, False, c.rng, schedule.DOWNLOAD, c.accepted
            )
            if d[0] == "wait":
                return self._at(d[1], c.id, "tick", job_id)
            c.stage = "downloading"
            self._status(c, m.DOWNLOADING)
            slow = "slow-link" in c.jt
            return self._at(
                now + self.timing["slow_download_s" if slow else "download_s"],
                c.id,
                "downloaded",
                job_id,
            )
        if c.stage == "install-wait":
            d = schedule.decide(now, c.local_offset_s, c.job, now < c.session_until, c.rng)
            if d[0] == "expired":
                c.job = None
                return self._status(c, m.INSTALLATION_FAILED, reason="deadline")
            if d[0] == "wait":
                if d[2] == schedule.WAIT_SESSION:
                    self._status(c, m.INSTALL_SCHEDULED, reason=m.REASON_SESSION)
                    return self._at(min(d[1], c.session_until), c.id, "tick", job_id)
                return self._at(d[1], c.id, "tick", job_id)
            c.stage = "installing"
            self._status(c, m.INSTALLING, progress=50, **self._fetched(c, 0.5))
            self._at(now + self.timing["install_s"], c.id, "installed", job_id)

    def _do_downloaded(self, c, job_id):
        if c.job is None or c.job.id != job_id:
            return
        for status in (m.DOWNLOADED, m.SIGNATURE_VERIFIED, m.INSTALL_SCHEDULED):
            self._status(c, status)
        c.stage = "install-wait"
        self._do_tick(c, job_id)

    def _fetched(self, c, share):
        if "delta" not in c.jt:
            return {}
        return {"downloaded": int(PAYLOAD_BYTES * DELTA_SHARE * share),
                "payload_bytes": PAYLOAD_BYTES}  # fmt: skip

    def _do_installed(self, c, job_id):
        self._status(c, m.INSTALLING, progress=100, **self._fetched(c, 1.0))
        self._status(c, m.INSTALLED)
        self._status(c, m.INSTALL_REBOOTING)
        c.stage = "rebooting"
        if "silent-after-reboot" in c.jt:
            return  # the new slot never talks again (and the old one never comes back)
        self._at(self.clock() + self.timing["reboot_s"], c.id, "trial", job_id)

    def _do_trial(self, c, job_id):
        c.stage = "trial"
        if "power-loss" in c.jt:
            evidence = {"resets": ["power-on", "power-on", "power-on"]}
            return self._end(c, m.ROLLED_BACK, reason=m.REASON_POWER_LOSS,
                             cause=m.CAUSE_POWER_LOSS, evidence=evidence)  # fmt: skip
        if "unexplained-resets" in c.jt:
            evidence = {"resets": ["unknown", "unknown", "unknown"]}
            return self._end(c, m.ROLLED_BACK, reason=m.REASON_UNEXPLAINED,
                             cause=m.CAUSE_UNEXPLAINED, evidence=evidence)  # fmt: skip
        if "crash" in c.jt:
            return self._end(c, m.ROLLED_BACK, reason=m.REASON_FELL_BACK, cause=m.CAUSE_CRASH,
                             evidence={"resets": ["watchdog"]})  # fmt: skip
        failing = ""
        for trait in c.jt:
            if trait.startswith("fail-trial:"):
                failing = trait[len("fail-trial:") :]
        results = []
        for check in CHECKS:
            passed = check != failing
            ev = {"problem": "start refused: connector lock failed"} if not passed else {}
            self._status(c, m.TRIAL_RUNNING, check=check, passed=passed, evidence=ev)
            results.append((check, passed, ev))
        verdict = "fail" if failing else "pass"
        self._publish(
            c, m.HEALTH, m.health_message(job_id, "B", "trial", results, verdict, self.clock())
        )
        self._at(self.clock() + self.timing["trial_s"], c.id, "verdict", job_id, failing)

    def _do_verdict(self, c, job_id, failing):
        if failing:
            return self._end(c, m.ROLLED_BACK, reason=m.REASON_TRIAL_FAILED, check=failing,
                             cause=m.CAUSE_CHECK_FAILED)  # fmt: skip
        version = c.job.version
        self._end(c, m.COMMITTED)
        c.version = version
        self._publish(c, m.INVENTORY, c.inventory(self.clock()), retain=True)
        if "regress" in c.jt:
            self._at(
                self.clock() + self.timing["regress_after_s"], c.id, "regress", job_id, version
            )

    def _do_regress(self, c, job_id, version):
        results = [("alarms", False, {"new_alarms": ["E42 overcurrent"]})]
        self._publish(
            c,
            m.HEALTH,
            m.health_message(job_id, "B", "observation", results, "regression", self.clock()),
        )

    def _end(self, c, status, **info):
        job = c.job
        self._status(c, status, **info)
        c.last_job = {
            "id": job.id,
            "version": job.version,
            "result": status,
            "reason": info.get("reason"),
            "check": info.get("check"),
            "cause": info.get("cause"),
        }
        if status == m.ROLLED_BACK:
            c.rollbacks.append(dict(c.last_job))
        c.job, c.stage = None, None
        self._publish(c, m.INVENTORY, c.inventory(self.clock()), retain=True)


def make_fleet(
    n, models, sites, profile_of=None, version="1.0.0", group="fleet", offsets=None, prefix_id="sim"
):
    """n chargers spread over models [(model, hw)] and sites [(site, site_type)]."""
    out = []
    for i in range(n):
        model, hw = models[i % len(models)]
        site, site_type = sites[(i // len(models)) % len(sites)]
        device = "%s-%05d" % (prefix_id, i)
        profile = profile_of(i, model, hw) if profile_of else "good"
        out.append(
            SimCharger(
                device,
                model,
                hw,
                version,
                site,
                site_type,
                group,
                profile,
                (offsets or {}).get(site, 0),
            )
        )
    return out
