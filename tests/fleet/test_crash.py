"""Crash safety and scale-out: `charger-fleet serve` processes killed with SIGKILL mid-wave
and restarted lose no status and send no charger a second job; two serve processes on one
PostgreSQL share the status stream (MQTT 5 shared subscription) with one planner."""

import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa

from fleet import projection as pj
from fleet.cli import status_text
from fleet.controller import SHARE
from fleet.schema import events, statuses
from fleet.transport import Connection, forget_session
from tests.fleet.conftest import make_release, open_store, serve_release, wait_until
from tests.fleet.helpers import Observer, run_cli, sim_fleet, write_rollout, write_sites

MODELS = [("AC22", "C"), ("AC22", "D")]
TYPES = ("workplace", "depot", "public")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve(db, broker, client_id, log, *extra):
    cmd = [
        sys.executable,
        "-m",
        "fleet.cli",
        "--db",
        db,
        "--mqtt",
        "127.0.0.1:%d" % broker.port,
        "serve",
        "--client-id",
        client_id,
        "--tick",
        "0.2",
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(proc, leave_session_of=None):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _events_of(store, kind):
    with store.engine.connect() as c:
        return c.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.kind == kind)
        ).scalar()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_wave_loses_and_duplicates_nothing(
    tmp_path, broker, kit, images, backend, request
):
    db = str(tmp_path / "fleet.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    url = serve_release(images, make_release(kit, "5.0.0"))
    sites = [("site-%02d" % i, TYPES[i % 3]) for i in range(12)]
    sites_file = write_sites(str(tmp_path / "sites.toml"), [(s, t, "UTC") for s, t in sites])
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "crash",
        url,
        kit.root_path,
        sites_file,
        waves={"sizes": ["30%", "rest"], "soak": 0.3},
        pilot={"per_cell": 1, "soak": 0.3},
    )
    store = open_store(db)
    log = open(str(tmp_path / "serve.log"), "ab")
    client_id = "crash-%s" % os.urandom(3).hex()
    observer = Observer(broker)
    procs = []
    try:
        with sim_fleet(
            broker,
            96,
            MODELS,
            sites,
            timing={"download_s": 0.4, "install_s": 0.4, "reboot_s": 0.4, "trial_s": 0.4},
        ) as sim:
            procs.append(serve(db, broker, client_id, log))
            wait_until(lambda: len(store.inventory()) == 96, 30, "inventory")
            assert run_cli("--db", db, "rollout", "start", spec)[0] == 0
            for kill in range(3):  # three kill -9s at different points of the rollout
                wait_until(
                    lambda n=kill: _events_of(store, "job-sent") >= 6 + 25 * n,
                    60,
                    "jobs going out",
                    explain=lambda: status_text(store, "crash"),
                )
                procs[-1].kill()  # SIGKILL: no clean shutdown, no DISCONNECT
                procs[-1].wait()
                # Statuses keep coming while it is dead; the broker keeps them for its session.
                # (Or the chargers in flight all finished: no more will come until it is back.)
                wait_until(
                    lambda: (
                        sum(c.seq for c in sim.chargers.values()) > _statuses_stored(store) + 5
                        or all(c.job is None for c in sim.chargers.values())
                    ),
                    20,
                    "statuses while the controller is down",
                )
                procs.append(serve(db, broker, client_id, log))
            wait_until(
                lambda: store.rollout("crash")["state"] == pj.DONE,
                90,
                "done",
                explain=lambda: status_text(store, "crash"),
            )
            stop(procs[-1])
            # No charger got a second job: one job id per charger, everywhere.
            for c in sim.chargers.values():
                assert len(c.jobs) == 1, (c.id, c.jobs)
            seen = {}
            for _, _, device, job_id in observer.of("job"):
                seen.setdefault(device, set()).add(job_id)
            assert all(len(ids) == 1 for ids in seen.values()) and len(seen) == 96
            # No status was lost: every seq each charger sent is stored, exactly once.
            with store.engine.connect() as conn:
                rows = conn.execute(sa.select(statuses.c.device_id, statuses.c.seq)).all()
            stored = {}
            for device, seq in rows:
                stored.setdefault(device, set()).add(seq)
            for c in sim.chargers.values():
                assert stored.get(c.id) == set(range(1, c.seq + 1)), c.id
            assert {t["state"] for t in store.targets("crash")} == {pj.SUCCEEDED}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        _leave(broker, client_id)
        observer.close()
        log.close()


def _statuses_stored(store):
    with store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(statuses)).scalar()


def _leave(broker, client_id):
    """End the killed controller's broker session (it would keep its share of statuses)."""
    forget_session(broker.settings(), client_id)


def test_a_controller_that_leaves_takes_no_share_of_statuses_after(tmp_path, broker):
    """Leaving after a kill -9, twice: `serve --leave` and Connection.stop(leave=True) right
    after the connect, each while the broker floods the resumed session with the statuses
    that queued meanwhile. Afterwards the one controller left gets every status; none go to
    a dead session. (A DISCONNECT with session expiry 0 alone lost this race here.)"""
    db, log_path = str(tmp_path / "f.db"), str(tmp_path / "serve.log")
    log = open(log_path, "ab")
    ids = ["leaver-%s" % os.urandom(3).hex() for _ in range(2)]
    pub = Connection(broker.settings(), "pub-%s" % os.urandom(3).hex(), session_expiry_s=0).start()
    got, everything = [], threading.Event()

    def on_status(topic, payload, mid, qos):
        got.append(topic)
        if len(got) >= 40:
            everything.set()

    def up(n):
        wait_until(lambda: open(log_path).read().count("subscribed") == n, 30, "serve up")

    live = Connection(broker.settings(), "live-%s" % os.urandom(3).hex(), on_status)
    live.subscribe("$share/%s/chargers/+/update/status" % SHARE)
    try:
        for n, client_id in enumerate(ids):
            first = serve(db, broker, client_id, log)
            up(2 * n + 1)
            first.kill()
            first.wait()
            for i in range(300):  # queued for the dead session (its share of the group)
                pub.publish("chargers/q-%03d/update/status" % i, b'{"status":"Idle","seq":1}')
            if n == 0:
                again = serve(db, broker, client_id, log, "--leave")
                up(2 * n + 2)
                stop(again)
            else:
                Connection(broker.settings(), client_id).start().stop(leave=True)
                up(2 * n + 1)
        live.start()
        for i in range(40):
            pub.publish("chargers/n-%03d/update/status" % i, b'{"status":"Idle","seq":1}')
        assert everything.wait(30), "the live controller got %d of 40 statuses" % len(got)
    finally:
        live.stop(leave=True)
        pub.stop()
        log.close()


def test_two_controllers_share_statuses_one_plans(tmp_path, broker, kit, images, pg_url):
    url = serve_release(images, make_release(kit, "5.1.0"))
    sites = [("site-%02d" % i, TYPES[i % 3]) for i in range(12)]
    spec = write_rollout(
        str(tmp_path / "r.toml"),
        "pair",
        url,
        kit.root_path,
        waves={"sizes": ["rest"], "soak": 0.2},
        pilot={"soak": 0.2},
    )
    store = open_store(pg_url)
    log = open(str(tmp_path / "serve.log"), "ab")
    ids = ["pair-a-%s" % os.urandom(2).hex(), "pair-b-%s" % os.urandom(2).hex()]
    procs = []
    try:
        with sim_fleet(broker, 48, MODELS, sites) as sim:
            procs = [serve(pg_url, broker, i, log) for i in ids]
            wait_until(lambda: len(store.inventory()) == 48, 30, "inventory")
            assert run_cli("--db", pg_url, "rollout", "start", spec)[0] == 0
            wait_until(
                lambda: store.rollout("pair")["state"] == pj.DONE,
                60,
                "done",
                explain=lambda: status_text(store, "pair"),
            )
            assert all(len(c.jobs) == 1 for c in sim.chargers.values())
            with store.engine.connect() as conn:
                n = conn.execute(sa.select(sa.func.count()).select_from(statuses)).scalar()
            assert n == sum(c.seq for c in sim.chargers.values())
    finally:
        for p in procs:
            stop(p)
        for i in ids:
            _leave(broker, i)
        log.close()
    text = open(str(tmp_path / "serve.log")).read()
    # One planner announced the decisions; both ingested a share of the statuses.
    assert text.count("pair: done") == 1, text
    shares = [int(x) for x in re.findall(r"ingested .*?(\d+) update/status", text)]
    assert len(shares) == 2 and all(n > 0 for n in shares), text
    assert sum(shares) >= n


def test_serve_exits_75_with_one_line_when_its_database_goes(tmp_path, broker, pg_server):
    """The PostgreSQL database disappears under a running controller: it exits 75 (retry)
    with one line naming the problem and no traceback; what it had not committed it had not
    acknowledged either."""
    name = "charger_fleet_gone_%s" % os.urandom(4).hex()
    admin = sa.create_engine(
        pg_server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(sa.text('CREATE DATABASE "%s"' % name))
    db = "%s/%s" % (pg_server.rsplit("/", 1)[0], name)
    log_path = str(tmp_path / "serve.log")
    with open(log_path, "ab") as log:
        proc = serve(db, broker, "gone-%s" % os.urandom(3).hex(), log, "--leave")
        try:
            wait_until(lambda: "subscribed" in open(log_path).read(), 30, "serve up")
            with admin.connect() as c:
                c.execute(sa.text('DROP DATABASE "%s" WITH (FORCE)' % name))
            assert proc.wait(60) == 75
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            admin.dispose()
    text = open(log_path).read()
    assert "Traceback" not in text, text
    assert re.search(r"^charger-fleet: database lost: .*\(exiting; restart", text, re.M), text
