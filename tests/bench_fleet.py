"""The fleet section of `make bench`: 100,000 chargers on SQLite and on PostgreSQL.

For each database: ingest 100,000 inventory rows; plan and create a rollout over them; ingest
100,000 statuses published by another process through a real mosquitto (wall time from the
first publish until every status is stored, and the database-only time for the same
statuses); build the 100,000-row matrix (table and HTML); evaluate every gate (timeouts,
soaks, halt rules) over the 100,000 targets. Targets: matrix under 10 s, gates under 1 s.
Figures are medians of `--repeat` rounds where a step can be repeated; on a shared machine
they are noisy: read them with the busy figure printed beside them.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import sqlalchemy as sa

from agent.core import messages as m
from fleet import matrix as mx
from fleet import planner
from fleet import projection as pj
from fleet.controller import Controller
from fleet.db import open_db
from fleet.schema import statuses, targets
from fleet.spec import DEFAULTS
from fleet.store import Store
from hil.services.mosquitto import Mosquitto

BROKER_CONFIG = ["max_queued_messages 0", "max_inflight_messages 0"]
RELEASE = {
    "url": "https://updates.example/ac22-2.0.0.cub",
    "version": "2.0.0",
    "security_version": 2,
    "bytes": 64 << 20,
    "expires": 2000000000,
    "compatible": [
        {"model": "AC22", "hardware_revisions": ["C", "D"]},
        {"model": "DC50", "hardware_revisions": ["A"]},
    ],
}


def device(i):
    return "bench-%06d" % i


def inventory_batch(n, now):
    out = []
    models = [("AC22", "C"), ("AC22", "D"), ("DC50", "A")]
    for i in range(n):
        model, hw = models[i % 3]
        dev = {
            "id": device(i),
            "model": model,
            "hardware_revision": hw,
            "group": "g%d" % (i % 4),
            "site": "site-%05d" % (i // 20),
            "site_type": ("depot", "public", "work")[i % 3 // 1],
        }
        boot = {
            "backend": "uboot",
            "booted": "A",
            "primary": "A",
            "slots": {"A": {"attempts_left": 3}, "B": {"attempts_left": 3}},
        }
        slots = {"A": {"version": "1.%d.0" % (i % 5), "state": "good"}, "B": {}}
        rollbacks = [{"version": "1.9.0", "result": "RolledBack"}] if i % 97 == 0 else []
        row = m.inventory_message(dev, boot, slots, None, rollbacks, now)
        out.append((m.INVENTORY, dev["id"], row))
    return out


def status_of(i):
    if i % 50 == 0:
        return m.status_message(
            m.ROLLED_BACK,
            {
                "job_id": "bench:" + device(i),
                "version": "2.0.0",
                "reason": m.REASON_TRIAL_FAILED,
                "check": "alarms",
                "cause": m.CAUSE_CHECK_FAILED,
            },
            1,
            0,
        )
    return m.status_message(m.COMMITTED, {"job_id": "bench:" + device(i), "version": "2.0.0"}, 1, 0)


def publish_main(host, port, n):
    """Child process: publish one status per charger on its own topic, QoS 1."""
    from fleet.transport import Connection

    conn = Connection(
        {"host": host, "port": port},
        "bench-pub-%d" % os.getpid(),
        session_expiry_s=0,
        max_inflight=5000,
    ).start()
    for start in range(0, n, 20000):  # paho has 65535 message ids: wait per chunk
        infos = [
            conn.publish(m.topic("chargers", device(i), m.STATUS), m.encode(status_of(i)))
            for i in range(start, min(n, start + 20000))
        ]
        for info in infos:
            info.wait_for_publish(120)
    conn.stop()


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def bench_db(url, n, repeat, broker, out):
    store = Store(open_db(url))
    now = time.time()
    batch = inventory_batch(n, now)
    t_inv, _ = timed(lambda: [store.ingest(batch[i : i + 5000], now) for i in range(0, n, 5000)])
    spec = {
        "name": "bench",
        "target": {
            k: []
            for k in (
                "models",
                "hardware_revisions",
                "groups",
                "site_types",
                "versions",
                "devices",
                "exclude",
            )
        },
        "pilot": {"per_cell": 2, "exclude_cells": []},
        "waves": {"sizes": ["10%", "rest"]},
    }
    inv = store.inventory()
    t_plan, plan = timed(lambda: planner.build_plan(inv, spec, RELEASE))
    rows = [
        (r["device_id"], w, planner.cohort_of(r), r["site"])
        for w, wave in enumerate(plan["waves"])
        for r in wave
    ]
    full_spec = json.loads(json.dumps(spec))
    full_spec.update(
        {
            "security": False,
            "timeouts": {"download": 3600, "install": 3600, "reboot": 900, "trial": 3600},
            "schedule": {"jitter": 0, "sites": None, "site_share": 0.25, "retries": 3},
            # The defaults (every 50th charger fails: the cohorts it falls in halt in each
            # round, rolled back after it), but no fleet-wide halt.
            "halt": dict(DEFAULTS["halt"], fleet_failures=10**6, rate=0.5),
            "approval": {"start": False, "above_share": 1.0},
            "pilot": {"per_cell": 2, "exclude_cells": [], "soak": 60},
            "waves": {"sizes": ["10%", "rest"], "soak": 60},
        }
    )
    t_create, _ = timed(
        lambda: store.record(
            now,
            "bench",
            "created",
            "bench",
            None,
            {
                "spec": full_spec,
                "release": RELEASE,
                "waves": len(plan["waves"]),
                "plan": rows,
                "skipped": plan["skipped"],
                "approve_start": False,
            },
        )
    )
    with store.engine.begin() as conn:  # as if every job had gone out
        conn.execute(
            targets.update()
            .where(targets.c.rollout == "bench")
            .values(
                state=pj.SENT,
                job_id=sa.func.concat("bench:", targets.c.device_id)
                if store.engine.dialect.name == "postgresql"
                else "bench:" + targets.c.device_id,
                sent_at=now,
                phase_since=now,
            )
        )
    # Statuses through the broker. The controller's session subscribes, goes away, another
    # process publishes every status (the broker queues them for the session), then the
    # controller comes back and catches up: its ingest rate, not a Python publisher's.
    client_id = "bench-ctl-%s" % os.urandom(3).hex()

    def controller(leave):
        ctl = Controller(store, broker.settings(), client_id=client_id, tick_s=3600)
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=ctl.run, args=(stop, ready, leave), daemon=True)
        thread.start()
        ready.wait(30)
        return ctl, stop, thread

    ctl, stop, thread = controller(False)  # keeps its session: the broker queues for it
    stop.set()
    thread.join(30)
    t_pub, _ = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "tests.bench_fleet", "--publish", str(broker.port), str(n)],
            check=True,
        )
    )

    def stored():
        with store.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(statuses)).scalar()

    t0 = time.perf_counter()
    ctl, stop, thread = controller(True)  # leaves at the end: no share for a dead session
    ctl.lock.try_acquire()
    while stored() < n:
        if time.perf_counter() - t0 > 600:
            raise SystemExit("statuses not all stored after 600 s: %d" % stored())
        time.sleep(0.1)  # polling the database for the end of a measured run
    t_broker = time.perf_counter() - t0
    stop.set()
    thread.join(30)
    # The same statuses again, database only (a fresh table).
    with store.engine.begin() as c:
        c.execute(statuses.delete())
        c.execute(
            targets.update()
            .where(targets.c.rollout == "bench")
            .values(state=pj.SENT, last_seq=None, committed_at=None, result=None, reason=None)
        )
    sts = [(m.STATUS, device(i), status_of(i)) for i in range(n)]
    t_db, _ = timed(
        lambda: [store.ingest(sts[i : i + 5000], time.time()) for i in range(0, n, 5000)]
    )
    rollout = store.rollout("bench")
    matrix_times, gate_times = [], []
    for _ in range(repeat):

        def matrix():
            cells = mx.build(store.inventory(), store.targets("bench"), rollout)
            mx.to_table(cells)
            mx.to_html(cells)
            return cells

        t, cells = timed(matrix)
        matrix_times.append(t)
        with store.engine.begin() as conn:
            t, halted = timed(lambda: ctl.gates(conn, store.rollout("bench", conn), time.time()))
            conn.rollback()  # measure the same state every round
        gate_times.append(t)
    med = statistics.median
    out.append(
        {
            "db": store.engine.dialect.name,
            "n": n,
            "inv": t_inv,
            "plan": t_plan,
            "create": t_create,
            "pub": t_pub,
            "broker": t_broker,
            "dbonly": t_db,
            "matrix": (med(matrix_times), min(matrix_times), max(matrix_times)),
            "gates": (med(gate_times), min(gate_times), max(gate_times)),
            "cells": len(cells),
            "halted": sorted(c for c in halted if c),
        }
    )
    store.engine.dispose()


def report(rows, busy):
    lines = ["fleet: %d chargers" % rows[0]["n"] if rows else "fleet: nothing measured"]
    for r in rows:
        n, (mm, mlo, mhi), (gm, glo, ghi) = r["n"], r["matrix"], r["gates"]
        lines += [
            "  %-10s inventory ingest %6.2f s (%7.0f rows/s); plan %5.2f s; create rollout "
            "%5.2f s" % (r["db"], r["inv"], n / r["inv"], r["plan"], r["create"]),
            "  %-10s statuses via mosquitto: controller catch-up %6.2f s (%7.0f/s); queued by "
            "the broker while it was away, published in %.1f s by another process"
            % ("", r["broker"], n / r["broker"], r["pub"]),
            "  %-10s statuses, database only %5.2f s (%7.0f/s)"
            % ("", r["dbonly"], n / r["dbonly"]),
            "  %-10s matrix (%d cells, table + HTML) median %5.2f s (%.2f-%.2f), target < 10 s: "
            "%s" % ("", r["cells"], mm, mlo, mhi, "ok" if mm < 10 else "MISSED"),
            "  %-10s all gates over %d targets median %5.3f s (%.3f-%.3f), target < 1 s: %s; "
            "halted cohorts %d"
            % ("", n, gm, glo, ghi, "ok" if gm < 1 else "MISSED", len(r["halted"])),
        ]
    if busy is not None:
        lines.append("  CPUs busy before the fleet run: %.0f%%" % (100 * busy))
    return "\n".join(lines)


def pg_url():
    url = os.environ.get("CHARGER_FLEET_PG") or "postgresql://postgres@127.0.0.1:5432/postgres"
    admin = sa.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    name = "charger_fleet_bench_%s" % os.urandom(4).hex()
    try:
        with admin.connect() as c:
            c.execute(sa.text('CREATE DATABASE "%s"' % name))
    except sa.exc.OperationalError as e:
        print("fleet: PostgreSQL not reachable (%s); set CHARGER_FLEET_PG" % str(e.orig)[:80])
        return None, None
    return url.rsplit("/", 1)[0] + "/" + name, (admin, name)


def run(n=100000, repeat=3, busy=None):
    work = tempfile.mkdtemp(prefix="fleet-bench-")
    broker = Mosquitto(os.path.join(work, "broker"), extra_config=BROKER_CONFIG).start()
    rows = []
    try:
        bench_db(os.path.join(work, "fleet.db"), n, repeat, broker, rows)
        url, admin = pg_url()
        if url:
            try:
                bench_db(url, n, repeat, broker, rows)
            finally:
                with admin[0].connect() as c:
                    c.execute(sa.text('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % admin[1]))
    finally:
        broker.stop()
        if not os.environ.get("FLEET_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print(report(rows, busy))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.bench_fleet", description=__doc__)
    p.add_argument("--chargers", type=int, default=100000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1,000 chargers, one round (smoke)")
    p.add_argument("--publish", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.publish:
        publish_main("127.0.0.1", int(args.publish[0]), int(args.publish[1]))
        return 0
    if args.quick:
        args.chargers, args.repeat = 1000, 1
    run(args.chargers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
