"""Fixtures for the fleet tests: a live mosquitto, a real database (SQLite file, and the
PostgreSQL at $CHARGER_FLEET_PG or 127.0.0.1:5432, else a throwaway cluster started with
initdb/pg_ctl), a signed release on a real HTTP server, and a running controller."""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import sqlalchemy as sa

from fleet.controller import Controller
from fleet.db import open_db
from fleet.store import Store
from hil.release import ReleaseKit
from hil.services.httpserver import FileServer
from hil.services.mosquitto import Mosquitto, free_port

PG_ENV = "CHARGER_FLEET_PG"
# What docs/fleet.md asks of a fleet's broker: no cap on the queue of a subscriber that is
# slow or away (mosquitto drops beyond 1000 by default), no cap on messages in flight.
BROKER_CONFIG = ["max_queued_messages 0", "max_inflight_messages 0"]


def _reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _throwaway_cluster():
    """initdb + pg_ctl on a free port; as the postgres user when we are root."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("no PostgreSQL server binaries: run `make sysdeps` (package postgresql)")
    bindir = os.path.dirname(bins[-1])
    work = tempfile.mkdtemp(prefix="fleet-pg-")
    data, port = os.path.join(work, "data"), free_port()
    run_as = []
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(work, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        run_as + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        run_as
        + [
            os.path.join(bindir, "pg_ctl"),
            "-D",
            data,
            "-w",
            "-l",
            os.path.join(work, "log"),
            "-o",
            "-p %d -k %s -c listen_addresses=127.0.0.1" % (port, work),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield "postgresql://postgres@127.0.0.1:%d/postgres" % port
    finally:
        subprocess.run(
            run_as + [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """A maintenance URL of a PostgreSQL server (its `postgres` database)."""
    url = os.environ.get(PG_ENV)
    if url:
        yield url
    elif _reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        with _throwaway_cluster() as url:
            yield url


@pytest.fixture
def pg_url(pg_server):
    """A uniquely named database for one test, dropped afterwards."""
    name = "charger_fleet_test_%s" % os.urandom(5).hex()
    admin = sa.create_engine(
        pg_server.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(sa.text('CREATE DATABASE "%s"' % name))
    base = pg_server.rsplit("/", 1)[0]
    try:
        yield "%s/%s" % (base, name)
    finally:
        with admin.connect() as c:
            c.execute(sa.text('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Mosquitto(str(tmp_path_factory.mktemp("broker")), extra_config=BROKER_CONFIG).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A release kit for AC22 rev C (rev D added to the bundle's compatible list)."""
    return ReleaseKit(str(tmp_path_factory.mktemp("kit")), "AC22", "C")


def make_release(kit, version, revisions=("C", "D"), size=4096):
    from agent.bundle.writer import PayloadSource, create_bundle

    image = os.path.join(kit.dir, "image-%s.bin" % version)
    with open(image, "wb") as f:
        f.write(os.urandom(size))
    out = os.path.join(kit.dir, "charger-%s.cub" % version)
    create_bundle(
        out,
        [PayloadSource("rootfs", "rootfs", image, "none")],
        [kit.release_key],
        version=version,
        security_version=1,
        compatible=[{"model": "AC22", "hardware_revisions": list(revisions)}],
        expires=int(time.time()) + 86400,
    )
    return out


@pytest.fixture(scope="module")
def images():
    server = FileServer({}).start()
    yield server
    server.shutdown()


def serve_release(images, path):
    name = os.path.basename(path)
    images.files[name] = path
    return "http://127.0.0.1:%d/%s" % (images.server_address[1], name)


class RunningController:
    def __init__(self, store, settings, **kw):
        self.ctl = Controller(store, settings, **kw)
        self.stop = threading.Event()
        ready = threading.Event()
        # leave=True: a test's controller is gone for good; its session must not keep taking
        # a share of the next test's statuses.
        self.thread = threading.Thread(
            target=self.ctl.run, args=(self.stop, ready, True), daemon=True
        )
        self.thread.start()
        assert ready.wait(20), "controller did not connect"

    def close(self):
        self.stop.set()
        self.thread.join(20)


@pytest.fixture
def controller():
    running = []

    def start(store, settings, **kw):
        kw.setdefault("tick_s", 0.2)
        kw.setdefault("client_id", "ctl-%s" % os.urandom(3).hex())
        r = RunningController(store, settings, **kw)
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()


def open_store(url):
    return Store(open_db(url))


def wait_until(predicate, timeout, what, poll=0.1, explain=None):
    """Poll a database-backed condition (no event crosses the database)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            more = "\n" + explain() if explain else ""
            raise AssertionError("timed out after %ss waiting for %s%s" % (timeout, what, more))
        time.sleep(poll)
