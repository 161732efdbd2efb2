"""`charger-fleet serve`: ingest the fleet's messages and advance the rollouts.

Invariant: a decision is committed to the event log before any message that carries it is
published (a job, a cancel), and every published job has the id of its target, so after a
kill -9 the restarted controller re-sends exactly the jobs and cancels the log says were sent
and the agent drops a repeat by its id: no charger gets two different jobs. Statuses come
through a shared subscription and are acknowledged only after their commit. Only the holder
of the planner lock decides; every process ingests.
"""

import json
import logging
import queue
import socket
import time

import sqlalchemy as sa

from agent.core import messages as m
from fleet import planner
from fleet import projection as pj
from fleet.db import PlannerLock
from fleet.schema import targets as tt
from fleet.spec import load_sites
from fleet.transport import Connection
from fleet.windows import install_slot

log = logging.getLogger("charger-fleet")
ACTOR = "controller"
SHARE = "charger-fleet"
SHARED = (m.STATUS, m.HEALTH)  # one controller handles each
EVERY = (m.INVENTORY, m.ONLINE)  # retained: every controller keeps the whole inventory


class Controller:
    def __init__(
        self,
        store,
        mqtt,
        prefix=m.DEFAULT_PREFIX,
        client_id=None,
        clock=time.time,
        tick_s=1.0,
        share=SHARE,
        say=None,
    ):
        self.store, self.prefix, self.clock, self.tick_s = store, prefix, clock, tick_s
        self.say = say or (lambda text: log.info("%s", text))
        # Stable across restarts, so the broker keeps this controller's session (and the
        # statuses that arrive while it is down) for it; several on one host need --client-id.
        self.client_id = client_id or "charger-fleet-%s" % socket.gethostname()
        self.inbox = queue.Queue()
        self.conn = Connection(mqtt, self.client_id, self._on_message, manual_ack=True)
        for suffix in SHARED:
            self.conn.subscribe("$share/%s/%s" % (share, m.device_filter(prefix, suffix)))
        for suffix in EVERY:
            self.conn.subscribe(m.device_filter(prefix, suffix))
        self.lock = PlannerLock(store.engine)
        self.sites_cache = {}
        self.resent = False
        self.ingested = 0

    def _on_message(self, topic, payload, mid, qos):
        self.inbox.put((topic, payload, mid, qos))

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop, ready=None, leave=False):
        self.conn.start()
        if ready is not None:
            ready.set()
        next_tick = 0.0
        try:
            while not stop.is_set():
                self.drain(timeout=max(0.0, min(self.tick_s, next_tick - time.monotonic())))
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self.tick_s
        finally:
            self.lock.release()
            self.conn.stop(leave)

    def drain(self, timeout, limit=5000):
        try:
            first = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return 0
        batch = [first]
        while len(batch) < limit:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        decoded = []
        for topic, payload, _, _ in batch:
            device, suffix = m.split_topic(self.prefix, topic)
            if device is None:
                continue
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if isinstance(doc, dict):
                decoded.append((suffix, device, doc))
        bad = self.store.ingest(decoded, self.clock())
        if bad:
            log.warning("%d message(s) broke the MQTT contract and were dropped", bad)
        for _, _, mid, qos in batch:  # only now: the rows are committed
            self.conn.ack(mid, qos)
        self.ingested += len(batch)
        return len(batch)

    def tick(self):
        if not self.lock.try_acquire():
            return
        if not self.resent:
            self.resend()
            self.resent = True
        now = self.clock()
        for rollout in self.store.rollouts(pj.ACTIVE + (pj.ABORTED,)):
            jobs, cancels = self.step(rollout, now)
            for device, job in jobs:
                self.conn.publish(m.topic(self.prefix, device, m.JOB), m.encode(job))
            for device, job_id in cancels:
                msg = m.encode(m.cancel_message(job_id))
                self.conn.publish(m.topic(self.prefix, device, m.CANCEL), msg)

    def resend(self):
        """After a restart: the jobs and cancels the log says were sent (same ids)."""
        for rollout in self.store.rollouts(pj.ACTIVE + (pj.ABORTED,)):
            sent = {
                e["device_id"]: e["data"]["job"]
                for e in self.store.events(rollout["name"], ["job-sent"])
            }
            for t in self.store.targets(rollout["name"]):
                if t["state"] == pj.SENT and t["last_seq"] is None and t["device_id"] in sent:
                    job = sent[t["device_id"]]
                    self.conn.publish(m.topic(self.prefix, t["device_id"], m.JOB), m.encode(job))
                if t["cancel_sent"] and t["state"] in pj.BEFORE_INSTALL:
                    msg = m.encode(m.cancel_message(t["job_id"]))
                    self.conn.publish(m.topic(self.prefix, t["device_id"], m.CANCEL), msg)

    # -- one rollout -------------------------------------------------------------------------

    def step(self, rollout, now):
        """Timeouts, soaks, halts, cancels, joiners, waves and jobs of one rollout; returns
        ([(device, job)], [(device, job_id)]) to publish after the commit."""
        name, spec = rollout["name"], rollout["spec"]
        store = self.store
        with store.engine.begin() as conn:
            targets = store.targets(name, conn)
            self._timeouts(conn, rollout, targets, now)
            self._soaks(conn, rollout, targets, now)
            rollout = store.rollout(name, conn)
            halted = self._halts(conn, rollout, targets, now)
            cancels = self._cancels(conn, rollout, targets, halted, now)
            jobs = []
            if rollout["state"] == pj.RUNNING and not rollout["needs_approval"]:
                self._joiners(conn, rollout, targets, now)
                targets = store.targets(name, conn)
                self._waves(conn, rollout, targets, halted, now)
                rollout = store.rollout(name, conn)
                if not rollout["needs_approval"]:
                    jobs = self._jobs(conn, rollout, targets, halted, now)
            self._maybe_done(conn, rollout, store.targets(name, conn), halted, now)
        del spec
        return jobs, cancels

    def _timeouts(self, conn, rollout, targets, now):
        to = rollout["spec"]["timeouts"]
        jitter = rollout["spec"]["schedule"]["jitter"]
        for t in targets:
            state, since = t["state"], t["phase_since"]
            if state not in pj.IN_FLIGHT or since is None:
                continue
            if state in (pj.SENT, pj.DOWNLOAD):
                phase, limit, start = "download", to["download"] + jitter, since
            elif state == pj.INSTALL:
                phase, limit = "install", to["install"] + jitter
                start = max(since, t["install_at"] or 0)
            elif state == pj.REBOOT:
                phase, limit, start = "reboot", to["reboot"], since
            else:
                phase, limit, start = "trial", to["trial"], since
            if now - start > limit:
                why = "silent: no status for %ds in the %s phase (timeout %ds)" % (
                    now - start,
                    phase,
                    limit,
                )
                self.store.append(
                    conn,
                    now,
                    rollout["name"],
                    "target-failed",
                    ACTOR,
                    t["device_id"],
                    {"result": "Timeout", "why": why},
                )
                t["state"] = pj.FAILED

    def _soak_s(self, rollout, wave):
        spec = rollout["spec"]
        if spec["security"]:
            return spec["fast_track"]["pilot_soak" if wave == 0 else "soak"]
        return spec["pilot"]["soak"] if wave == 0 else spec["waves"]["soak"]

    def _soaks(self, conn, rollout, targets, now):
        for t in targets:
            if t["state"] == pj.SOAKING and now - t["committed_at"] >= self._soak_s(
                rollout, t["wave"]
            ):
                self.store.append(
                    conn,
                    now,
                    rollout["name"],
                    "target-succeeded",
                    ACTOR,
                    t["device_id"],
                    {"why": "committed and soaked"},
                )
                t["state"] = pj.SUCCEEDED

    def _halts(self, conn, rollout, targets, now):
        """Halted cohorts (None: the whole fleet) after evaluating the rules."""
        halted = {h["cohort"] for h in rollout["halts"]}
        if rollout["state"] == pj.ABORTED:
            return halted | {None}
        counts = planner.tally(targets, (pj.FAILED,), (pj.FAILED, pj.SUCCEEDED))
        for h in planner.halts(counts, rollout["spec"], rollout["wave"], halted):
            self.store.append(conn, now, rollout["name"], "halted", ACTOR, None, h)
            halted.add(h["cohort"])
            self.say(
                "HALT %s %s: %s (%s: %s); chargers %s"
                % (
                    rollout["name"],
                    "fleet-wide" if h["scope"] == "fleet" else "cohort " + h["cohort"],
                    h["check"],
                    "rule",
                    h["evidence"],
                    ", ".join(h["devices"][:10]),
                )
            )
        return halted

    def _cancels(self, conn, rollout, targets, halted, now):
        stop_all = None in halted or rollout["state"] == pj.ABORTED
        todo = [
            t
            for t in targets
            if t["state"] in pj.BEFORE_INSTALL
            and not t["cancel_sent"]
            and (stop_all or t["cohort"] in halted)
        ]
        if not todo:
            return []
        devices = sorted(t["device_id"] for t in todo)
        self.store.append(
            conn,
            now,
            rollout["name"],
            "cancel-sent",
            ACTOR,
            None,
            {"devices": devices, "why": "halted or aborted"},
        )
        return [(t["device_id"], t["job_id"]) for t in todo]

    def _joiners(self, conn, rollout, targets, now):
        known = {t["device_id"] for t in targets}
        wave = max(rollout["wave"], 1)
        for row in self.store.inventory(conn):
            if row["device_id"] in known:
                continue
            if planner.eligibility(rollout["spec"], rollout["release"], row) is None:
                data = {
                    "wave": wave,
                    "cohort": planner.cohort_of(row),
                    "site": row["site"],
                    "why": "started matching the target filter",
                }
                self.store.append(
                    conn, now, rollout["name"], "target-added", ACTOR, row["device_id"], data
                )

    def _waves(self, conn, rollout, targets, halted, now):
        name, wave = rollout["name"], rollout["wave"]
        if None in halted:
            return
        if wave >= 0:
            held = [
                t
                for t in targets
                if t["wave"] <= wave
                and t["wave"] >= 0
                and t["state"] not in pj.FINAL
                and not (t["state"] == pj.PLANNED and t["cohort"] in halted)
            ]
            if held or wave + 1 >= rollout["waves"]:
                return
        nxt = wave + 1
        if halted and rollout["spec"]["halt"]["other_cohorts"] == "approval":
            gate = "after-halt-%d" % nxt
            if gate not in rollout["approvals"]:
                self._need(conn, rollout, gate, now)
                return
        fleet = max(1, len(self.store.inventory(conn)))
        upto = sum(1 for t in targets if 0 <= t["wave"] <= nxt)
        gate = "wave-%d" % nxt
        if (
            nxt > 0
            and upto / fleet > rollout["spec"]["approval"]["above_share"]
            and gate not in rollout["approvals"]
        ):
            self._need(conn, rollout, gate, now)
            return
        self.store.append(
            conn,
            now,
            name,
            "wave-released",
            ACTOR,
            None,
            {"wave": nxt, "chargers": sum(1 for t in targets if t["wave"] == nxt)},
        )
        self.say("%s: wave %d released" % (name, nxt))

    def _need(self, conn, rollout, gate, now):
        if rollout["needs_approval"] != gate:
            self.store.append(
                conn, now, rollout["name"], "needs-approval", ACTOR, None, {"gate": gate}
            )
            self.say(
                "%s: waiting for `charger-fleet rollout approve %s` (%s)"
                % (rollout["name"], rollout["name"], gate)
            )

    def _site_load(self, conn):
        sizes, busy = {}, {}
        for row in self.store.inventory(conn):
            sizes[row["site"]] = sizes.get(row["site"], 0) + 1
        q = sa.select(tt.c.site, sa.func.count()).where(tt.c.state.in_(pj.IN_FLIGHT))
        for site, n in conn.execute(q.group_by(tt.c.site)):
            busy[site] = n
        return sizes, busy

    def _sites(self, spec):
        path = spec["schedule"]["sites"]
        if not path:
            return None
        if path not in self.sites_cache:
            self.sites_cache[path] = load_sites(path)
        return self.sites_cache[path]

    def _jobs(self, conn, rollout, targets, halted, now):
        spec, release, name = rollout["spec"], rollout["release"], rollout["name"]
        ready = [
            t
            for t in targets
            if t["state"] == pj.PLANNED
            and 0 <= t["wave"] <= rollout["wave"]
            and t["cohort"] not in halted
        ]
        if not ready:
            return []
        sizes, busy = self._site_load(conn)
        inv = {r["device_id"]: r for r in self.store.inventory(conn)}
        sites = self._sites(spec)
        share, out = spec["schedule"]["site_share"], []
        for t in sorted(ready, key=lambda t: (t["wave"], t["device_id"])):
            row = inv.get(t["device_id"])
            why = (
                "no longer in the inventory"
                if row is None
                else planner.eligibility(spec, release, row)
            )
            if why:
                self.store.append(
                    conn,
                    now,
                    name,
                    "target-skipped",
                    ACTOR,
                    t["device_id"],
                    {"why": why or "no longer matches the target filter"},
                )
                continue
            site = t["site"]
            cap = max(1, int(share * sizes.get(site, 1)))
            if site and busy.get(site, 0) >= cap:
                continue
            slot = install_slot(site, sites, now, spec["schedule"]["jitter"])
            job = m.job_message(
                "%s:%s" % (name, t["device_id"]),
                release["url"],
                release["version"],
                models=[row["model"]],
                install_at=slot["install_at"],
                window=slot["window"],
                jitter_s=slot["jitter_s"],
                retries=spec["schedule"]["retries"],
            )
            self.store.append(
                conn,
                now,
                name,
                "job-sent",
                ACTOR,
                t["device_id"],
                {"job_id": job["job_id"], "install_at": slot["install_at"], "job": job},
            )
            busy[site] = busy.get(site, 0) + 1
            out.append((t["device_id"], job))
        return out

    def _maybe_done(self, conn, rollout, targets, halted, now):
        if rollout["state"] != pj.RUNNING or rollout["wave"] + 1 < rollout["waves"]:
            return
        if all(t["state"] in pj.FINAL or t["cohort"] in halted for t in targets):
            self.store.append(
                conn,
                now,
                rollout["name"],
                "done",
                ACTOR,
                None,
                {"why": "every wave released and finished"},
            )
            self.say("%s: done" % rollout["name"])
