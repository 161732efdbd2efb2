"""What the controller writes and reads: the event log, the device logs, the inventory.

Invariant: every decision is appended to `events` and applied to the projection in the same
transaction; every status is stored once per (device, seq) however often the broker delivers
it (QoS 1 is at least once), and only after the transaction commits does the controller
acknowledge the MQTT message. The inventory keeps the newest row per charger by its `ts`.
"""

import contextlib
import gc
import json

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from agent.core import messages as m
from fleet import projection as pj
from fleet.errors import NotFound
from fleet.schema import events, health, inventory, rollouts, statuses, targets

CHUNK = 500  # rows per IN (...) query


class Store:
    def __init__(self, engine):
        self.engine = engine
        self._insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert
        self.inventory_changes = 0  # rows upserted so far (the controller looks for joiners)

    # -- events --------------------------------------------------------------------------------

    def append(self, conn, now, rollout, kind, actor, device_id=None, data=None):
        data = data or {}
        text = json.dumps(data, sort_keys=True)
        row = {
            "ts": now,
            "rollout": rollout,
            "kind": kind,
            "actor": actor,
            "device_id": device_id,
            "data": text,
        }
        ev_id = conn.execute(events.insert().values(**row)).inserted_primary_key[0]
        pj.apply_event(conn, dict(row, id=ev_id, data=data))
        return ev_id

    def record(self, now, rollout, kind, actor, device_id=None, data=None):
        with self.engine.begin() as conn:
            return self.append(conn, now, rollout, kind, actor, device_id, data)

    def events(self, rollout=None, kinds=None):
        q = sa.select(events).order_by(events.c.id)
        if rollout is not None:
            q = q.where(events.c.rollout == rollout)
        if kinds:
            q = q.where(events.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            return [dict(r, data=json.loads(r["data"])) for r in conn.execute(q).mappings()]

    # -- ingest --------------------------------------------------------------------------------

    def ingest(self, batch, now):
        """batch: [(suffix, device_id, payload dict)] straight from the broker. Returns the
        number of messages that broke the contract (logged by the caller, never raised)."""
        inv, online, sts, hls, bad = {}, {}, [], [], 0
        for suffix, device, payload in batch:
            try:
                if suffix == m.INVENTORY:
                    row = m.parse_inventory(payload)
                    if row["device_id"] == device:
                        prev = inv.get(device)
                        if prev is None or row["ts"] >= prev["ts"]:
                            inv[device] = row
                elif suffix == m.ONLINE:
                    online[device] = m.parse_online(payload)["online"]
                elif suffix == m.STATUS:
                    sts.append((device, m.parse_status(payload)))
                elif suffix == m.HEALTH:
                    hls.append((device, m.parse_health(payload)))
            except m.MessageInvalid:
                bad += 1
        with self.engine.begin() as conn:
            if inv:
                self._upsert_inventory(conn, list(inv.values()), now)
                self.inventory_changes += len(inv)
            if online:
                stmt = (
                    inventory.update()
                    .where(inventory.c.device_id == sa.bindparam("b_device"))
                    .values(online=sa.bindparam("v_online"))
                )
                conn.execute(stmt, [{"b_device": d, "v_online": v} for d, v in online.items()])
            if sts:
                self._statuses(conn, sts, now)
            if hls:
                self._health(conn, hls, now)
        return bad

    def _upsert_inventory(self, conn, rows, now):
        values = [
            {
                "device_id": r["device_id"],
                "model": r["model"],
                "hardware_revision": r["hardware_revision"],
                "version": r["version"],
                "grp": r["group"],
                "site": r["site"],
                "site_type": r["site_type"],
                "components": json.dumps(r["components"], sort_keys=True),
                "last_result": r["last_result"],
                "last_version": r["last_version"],
                "rollbacks": json.dumps(r["rollbacks"]),
                "power_loss_rollbacks": json.dumps(r["power_loss_rollbacks"]),
                "security_floor": r["security_floor"],
                "online": None,
                "ts": r["ts"],
                "seen": now,
            }
            for r in rows
        ]
        # One statement, many parameter sets: compiled once and cached (a multi-row VALUES
        # would be compiled anew for every batch size).
        stmt = self._insert(inventory)
        cols = [c.name for c in inventory.columns if c.name not in ("device_id", "online")]
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id"],
            set_={c: stmt.excluded[c] for c in cols},
            where=stmt.excluded.ts >= inventory.c.ts,
        )
        conn.execute(stmt, values)

    def _statuses(self, conn, sts, now):
        rows = [
            {
                "device_id": d,
                "seq": s["seq"],
                "job_id": s["job_id"],
                "status": s["status"],
                "reason": s["reason"],
                "check_name": s["check"],
                "cause": s["cause"],
                "version": s["version"],
                "ts": s["ts"],
                "received": now,
                "downloaded": s.get("downloaded"),
                "payload_bytes": s.get("payload_bytes"),
            }
            for d, s in sts
        ]
        stmt = self._insert(statuses).on_conflict_do_nothing(index_elements=["device_id", "seq"])
        conn.execute(stmt, rows)
        by_job = self._targets_by_job(conn, {s["job_id"] for _, s in sts if s["job_id"]})
        changed = {}
        for device, st in sorted(sts, key=lambda x: (x[0], x[1]["seq"])):
            target = by_job.get(st["job_id"])
            if target is None or target["device_id"] != device:
                continue  # not ours, or a charger speaking for another's job
            values = pj.status_effect(target, st, now)
            if values:
                target.update(values)
                changed[st["job_id"]] = target
        self._write_targets(conn, changed.values())

    def _health(self, conn, hls, now):
        rows = [
            {
                "device_id": d,
                "job_id": h["job_id"],
                "phase": h["phase"],
                "ts": h["ts"] or 0,
                "verdict": h["verdict"],
                "failed": json.dumps(h["failed"]),
                "received": now,
            }
            for d, h in hls
        ]
        conn.execute(self._insert(health).on_conflict_do_nothing(), rows)
        by_job = self._targets_by_job(conn, {h["job_id"] for _, h in hls})
        changed = {}
        for device, h in hls:
            target = by_job.get(h["job_id"])
            if target is not None and target["device_id"] == device:
                values = pj.health_effect(target, h)
                if values:
                    target.update(values)
                    changed[h["job_id"]] = target
        self._write_targets(conn, changed.values())

    def _targets_by_job(self, conn, job_ids):
        found, ids = {}, sorted(job_ids)
        for i in range(0, len(ids), CHUNK):
            q = sa.select(targets).where(targets.c.job_id.in_(ids[i : i + CHUNK]))
            if self.engine.dialect.name == "postgresql":
                # Several controllers ingest at once: lock the rows (in one order, so two
                # never deadlock) so neither overwrites the other's newer status.
                q = q.order_by(targets.c.job_id).with_for_update()
            for row in _dicts(conn.execute(q)):
                found[row["job_id"]] = row
        return found

    def _write_targets(self, conn, rows):
        rows = list(rows)
        if not rows:
            return
        cols = (
            "state",
            "phase_since",
            "last_seq",
            "committed_at",
            "result",
            "reason",
            "downloaded",
        )
        stmt = (
            targets.update()
            .where(targets.c.rollout == sa.bindparam("b_rollout"))
            .where(targets.c.device_id == sa.bindparam("b_device"))
            .values({c: sa.bindparam("v_" + c) for c in cols})
        )
        params = [
            dict(
                {"b_rollout": r["rollout"], "b_device": r["device_id"]},
                **{"v_" + c: r[c] for c in cols},
            )
            for r in rows
        ]
        conn.execute(stmt, params)

    # -- reads ---------------------------------------------------------------------------------

    def rollout(self, name, conn=None):
        q = sa.select(rollouts).where(rollouts.c.name == name)
        if conn is None:
            with self.engine.connect() as c:
                row = c.execute(q).mappings().first()
        else:
            row = conn.execute(q).mappings().first()
        if row is None:
            raise NotFound("no rollout named %r" % name, hint="see `charger-fleet rollout list`")
        return _decode_rollout(row)

    def rollouts(self, states=None):
        q = sa.select(rollouts).order_by(rollouts.c.created)
        if states:
            q = q.where(rollouts.c.state.in_(states))
        with self.engine.connect() as conn:
            return [_decode_rollout(r) for r in conn.execute(q).mappings()]

    def targets(self, rollout, conn=None):
        q = sa.select(targets).where(targets.c.rollout == rollout)
        if conn is None:
            with self.engine.connect() as c:
                return _dicts(c.execute(q))
        return _dicts(conn.execute(q))

    def inventory(self, conn=None):
        q = sa.select(inventory)
        if conn is None:
            with self.engine.connect() as c:
                return _inventory_rows(c.execute(q))
        return _inventory_rows(conn.execute(q))

    def inventory_of(self, conn, devices):
        out, ids = {}, sorted(devices)
        for i in range(0, len(ids), CHUNK):
            q = sa.select(inventory).where(inventory.c.device_id.in_(ids[i : i + CHUNK]))
            for row in _inventory_rows(conn.execute(q)):
                out[row["device_id"]] = row
        return out


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while a large result becomes dicts: they hold no
    cycles, and with 100,000 rows its repeated passes over the growing heap took three
    quarters of the time here (2.5-7.7 s against 0.8 s for the inventory)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _decode_rollout(row):
    out = dict(row)
    for key in ("spec", "release", "halts", "approvals"):
        out[key] = json.loads(out[key])
    return out


def _dicts(result):
    """Rows as plain dicts, the column names looked up once (dict(RowMapping) builds its
    key view anew for every row)."""
    cols = list(result.keys())
    with _no_gc():
        return [dict(zip(cols, row)) for row in result.all()]  # fetchall: one driver call


def _inventory_rows(result):
    rows = _dicts(result)
    with _no_gc():
        for out in rows:
            out["group"] = out.pop("grp")
            for key in ("components", "rollbacks", "power_loss_rollbacks"):
                text = out[key]
                # Most rows hold empty ones: skip the JSON parser for them.
                out[key] = [] if text == "[]" else {} if text == "{}" else json.loads(text)
    return rows
