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
from fleet.schema import inventory as inv_t
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
        self.share = share
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
        self._joiners_seen = -1
        self.ingested = 0
        self.counts = {}  # suffix -> messages ingested

    def _on_message(self, topic, payload, mid, qos):
        self.inbox.put((topic, payload, mid, qos))

    # -- the loop --------------------------------------------------------------------------

    def run(self, stop, ready=None, leave=False):
        self.conn.start()
        self.say("subscribed as %s (shared group %s)" % (self.client_id, self.share))
        if ready is not None:
            ready.set()
        next_tick = 0.0
        try:
            while not stop.is_set():
                # At most half a second, so a stop request is noticed promptly.
                self.drain(timeout=max(0.0, min(0.5, next_tick - time.monotonic())))
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self.tick_s
        finally:
            self.lock.release()
            try:
                self.conn.stop(leave)  # leaving needs the broker: Unavailable if it is away
            finally:
                self.say(
                    "ingested %s"
                    % ", ".join("%d %s" % (n, suffix) for suffix, n in sorted(self.counts.items()))
                )

    def drain(self, timeout, limit=5000, linger_s=0.05):
        """Ingest what arrived: one transaction per batch. After the first message it waits
        up to linger_s for more, so a steady stream is written in large batches (a commit
        per message would cap ingest at a few hundred per second)."""
        try:
            first = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return 0
        batch, until = [first], time.monotonic() + linger_s
        while len(batch) < limit:
            try:
                batch.append(self.inbox.get(timeout=max(0.0, until - time.monotonic())))
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
                self.counts[suffix] = self.counts.get(suffix, 0) + 1
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
        name, store = rollout["name"], self.store
        with store.engine.begin() as conn:
            halted = self.gates(conn, rollout, now)
            rollout = store.rollout(name, conn)
            cancels = self._cancels(conn, rollout, halted, now)
            jobs = []
            if rollout["state"] == pj.RUNNING and not rollout["needs_approval"]:
                if self.joiners_due:
                    self._joiners(conn, rollout, now)
                self._waves(conn, rollout, halted, now)
                rollout = store.rollout(name, conn)
                if not rollout["needs_approval"]:
                    jobs = self._jobs(conn, rollout, halted, now)
            self._maybe_done(conn, rollout, halted, now)
        return jobs, cancels

    def gates(self, conn, rollout, now):
        """Every rule over every target: phase timeouts, finished soaks, halt rules.
        Returns the halted cohorts (None: the whole fleet)."""
        self._timeouts(conn, rollout, now)
        self._soaks(conn, rollout, now)
        return self._halts(conn, store_rollout(self.store, rollout["name"], conn), now)

    def _timeouts(self, conn, rollout, now):
        to, name = rollout["spec"]["timeouts"], rollout["name"]
        jitter = rollout["spec"]["schedule"]["jitter"]
        shortest = min(to["download"] + jitter, to["install"], to["reboot"], to["trial"])
        q = sa.select(tt.c.device_id, tt.c.state, tt.c.phase_since, tt.c.install_at).where(
            tt.c.rollout == name, tt.c.state.in_(pj.IN_FLIGHT), tt.c.phase_since < now - shortest
        )
        for device, state, since, install_at in conn.execute(q).all():
            if state in (pj.SENT, pj.DOWNLOAD):
                phase, limit, start = "download", to["download"] + jitter, since
            elif state == pj.INSTALL:
                phase, limit = "install", to["install"] + jitter
                start = max(since, install_at or 0)
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
                    name,
                    "target-failed",
                    ACTOR,
                    device,
                    {"result": "Timeout", "why": why},
                )

    def _soak_s(self, rollout, wave):
        spec = rollout["spec"]
        if spec["security"]:
            return spec["fast_track"]["pilot_soak" if wave == 0 else "soak"]
        return spec["pilot"]["soak"] if wave == 0 else spec["waves"]["soak"]

    def _soaks(self, conn, rollout, now):
        shortest = min(self._soak_s(rollout, 0), self._soak_s(rollout, 1))
        q = sa.select(tt.c.device_id, tt.c.wave, tt.c.committed_at).where(
            tt.c.rollout == rollout["name"],
            tt.c.state == pj.SOAKING,
            tt.c.committed_at <= now - shortest,
        )
        for device, wave, committed in conn.execute(q).all():
            if now - committed >= self._soak_s(rollout, wave):
                self.store.append(
                    conn,
                    now,
                    rollout["name"],
                    "target-succeeded",
                    ACTOR,
                    device,
                    {"why": "committed and soaked"},
                )

    def _halts(self, conn, rollout, now):
        halted = {h["cohort"] for h in pj.active_halts(rollout)}
        if rollout["state"] == pj.ABORTED:
            return halted | {None}
        counts = pj.tally(conn, rollout["name"])
        seen = pj.acknowledged(rollout)
        found = planner.halts(counts, rollout["spec"], rollout["wave"], halted, seen)
        for h in found:
            bad = pj.UNEXPLAINED if h["check"] == "unexplained-resets" else pj.FAILED
            fq = sa.select(tt.c.device_id).where(tt.c.rollout == rollout["name"], tt.c.state == bad)
            if h["cohort"] is not None:
                fq = fq.where(tt.c.cohort == h["cohort"])
            h["devices"] = [d for (d,) in conn.execute(fq.order_by(tt.c.device_id).limit(50))]
            self.store.append(conn, now, rollout["name"], "halted", ACTOR, None, h)
            halted.add(h["cohort"])
            self.say(
                "HALT %s %s: %s rule, %s; chargers %s"
                % (
                    rollout["name"],
                    "fleet-wide" if h["scope"] == "fleet" else "cohort " + h["cohort"],
                    h["check"],
                    h["evidence"],
                    ", ".join(h["devices"][:10]),
                )
            )
        return halted

    def _cancels(self, conn, rollout, halted, now):
        if not halted:
            return []
        q = sa.select(tt.c.device_id, tt.c.job_id).where(
            tt.c.rollout == rollout["name"],
            tt.c.state.in_(pj.BEFORE_INSTALL),
            tt.c.cancel_sent.is_(False),
        )
        if None not in halted:
            q = q.where(tt.c.cohort.in_([c for c in halted if c is not None]))
        todo = conn.execute(q.order_by(tt.c.device_id)).all()
        if not todo:
            return []
        self.store.append(
            conn,
            now,
            rollout["name"],
            "cancel-sent",
            ACTOR,
            None,
            {"devices": [d for d, _ in todo], "why": "halted or aborted"},
        )
        return [(d, j) for d, j in todo]

    @property
    def joiners_due(self):
        changed = self.store.inventory_changes
        if changed != self._joiners_seen:
            self._joiners_seen = changed
            return True
        return False

    def _joiners(self, conn, rollout, now):
        known = {
            d
            for (d,) in conn.execute(
                sa.select(tt.c.device_id).where(tt.c.rollout == rollout["name"])
            )
        }
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

    def _count(self, conn, *where):
        return conn.execute(sa.select(sa.func.count()).select_from(tt).where(*where)).scalar()

    def _waves(self, conn, rollout, halted, now):
        name, wave = rollout["name"], rollout["wave"]
        if None in halted:
            return
        if wave >= 0:
            if wave + 1 >= rollout["waves"]:
                return
            open_ = sa.and_(tt.c.state.not_in(pj.FINAL), tt.c.wave >= 0, tt.c.wave <= wave)
            held = sa.and_(
                tt.c.state == pj.PLANNED,
                tt.c.cohort.in_([c for c in halted if c is not None] or [""]),
            )
            if self._count(conn, tt.c.rollout == name, open_, sa.not_(held)):
                return
        nxt = wave + 1
        if halted and rollout["spec"]["halt"]["other_cohorts"] == "approval":
            gate = "after-halt-%d" % nxt
            if gate not in rollout["approvals"]:
                return self._need(conn, rollout, gate, now)
        fleet = max(1, conn.execute(sa.select(sa.func.count()).select_from(inv_t)).scalar())
        upto = self._count(conn, tt.c.rollout == name, tt.c.wave >= 0, tt.c.wave <= nxt)
        gate = "wave-%d" % nxt
        if (
            nxt > 0
            and upto / fleet > rollout["spec"]["approval"]["above_share"]
            and gate not in rollout["approvals"]
        ):
            return self._need(conn, rollout, gate, now)
        size = self._count(conn, tt.c.rollout == name, tt.c.wave == nxt)
        self.store.append(
            conn, now, name, "wave-released", ACTOR, None, {"wave": nxt, "chargers": size}
        )
        self.say(
            "%s: %s released (%d chargers)" % (name, "pilot" if nxt == 0 else "wave %d" % nxt, size)
        )

    def _need(self, conn, rollout, gate, now):
        if rollout["needs_approval"] != gate:
            self.store.append(
                conn, now, rollout["name"], "needs-approval", ACTOR, None, {"gate": gate}
            )
            self.say(
                "%s: waiting for `charger-fleet rollout approve %s` (%s)"
                % (rollout["name"], rollout["name"], gate)
            )

    def _sites(self, spec):
        path = spec["schedule"]["sites"]
        if not path:
            return None
        if path not in self.sites_cache:
            self.sites_cache[path] = load_sites(path)
        return self.sites_cache[path]

    def _jobs(self, conn, rollout, halted, now):
        spec, release, name = rollout["spec"], rollout["release"], rollout["name"]
        q = sa.select(tt.c.device_id, tt.c.site, tt.c.wave).where(
            tt.c.rollout == name,
            tt.c.state == pj.PLANNED,
            tt.c.wave >= 0,
            tt.c.wave <= rollout["wave"],
        )
        if halted:
            q = q.where(tt.c.cohort.not_in([c for c in halted if c is not None]))
        ready = conn.execute(q.order_by(tt.c.wave, tt.c.device_id)).all()
        if not ready:
            return []
        sizes = dict(
            conn.execute(sa.select(inv_t.c.site, sa.func.count()).group_by(inv_t.c.site)).all()
        )
        busy = dict(
            conn.execute(
                sa.select(tt.c.site, sa.func.count())
                .where(tt.c.state.in_(pj.IN_FLIGHT))
                .group_by(tt.c.site)
            ).all()
        )
        share, picked = spec["schedule"]["site_share"], []
        for device, site, _ in ready:
            cap = max(1, int(share * sizes.get(site, 1)))
            if busy.get(site, 0) < cap:
                busy[site] = busy.get(site, 0) + 1
                picked.append((device, site))
        inv = self.store.inventory_of(conn, [d for d, _ in picked])
        sites, out = self._sites(spec), []
        for device, site in picked:
            row = inv.get(device)
            why = (
                "no longer in the inventory"
                if row is None
                else planner.eligibility(spec, release, row)
            )
            if why is not None:
                self.store.append(
                    conn,
                    now,
                    name,
                    "target-skipped",
                    ACTOR,
                    device,
                    {"why": why or "no longer matches the target filter"},
                )
                continue
            slot = install_slot(site, sites, now, spec["schedule"]["jitter"])
            job = m.job_message(
                "%s:%s" % (name, device),
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
                device,
                {
                    "job_id": job["job_id"],
                    "install_at": slot["install_at"],
                    "site": site,
                    "job": job,
                },
            )
            out.append((device, job))
        return out

    def _maybe_done(self, conn, rollout, halted, now):
        if rollout["state"] != pj.RUNNING or rollout["wave"] + 1 < rollout["waves"]:
            return
        q = [tt.c.rollout == rollout["name"], tt.c.state.not_in(pj.FINAL)]
        if halted:
            q.append(tt.c.cohort.not_in([c for c in halted if c is not None] or [""]))
        if not self._count(conn, *q):
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


def store_rollout(store, name, conn):
    return store.rollout(name, conn)
