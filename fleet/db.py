"""Open the controller's database (SQLite file or PostgreSQL URL), migrate it, and hold the
planner lock.

Invariant: an Engine returned by `open_db` has the schema at Alembic's head, and at most one
process at a time holds a database's planner lock; the lock dies with its process (a
PostgreSQL session advisory lock, or an flock beside the SQLite file), so a kill -9 never
leaves it stuck.
"""

import contextlib
import fcntl
import os

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from fleet.errors import Unavailable

ENV_VAR = "CHARGER_FLEET_DB"
DEFAULT = "charger-fleet.db"
LOCK_KEY = 0x63667474  # "cftt": the planner's advisory lock id on PostgreSQL
MIGRATE_KEY = LOCK_KEY + 1
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def url_of(db):
    """A path or an SQLAlchemy URL -> URL (postgresql:// uses psycopg 3)."""
    db = db or os.environ.get(ENV_VAR) or DEFAULT
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(db)


def _sqlite_pragmas(dbapi_conn, record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (status, matrix) beside the controller
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def engine_for(db):
    url = url_of(db)
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise Unavailable("cannot use database %r: %s" % (db, e)) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_db(db=None):
    """Engine with the schema migrated to head. Unavailable if the database cannot be reached."""
    engine = engine_for(db)
    try:
        with migration_lock(engine):
            with engine.begin() as conn:
                cfg = AlembicConfig()
                cfg.set_main_option("script_location", MIGRATIONS)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except sa.exc.OperationalError as e:
        raise Unavailable(
            "database %s is not reachable: %s" % (engine.url.render_as_string(True), _first(e)),
            hint="check --db / %s and that the server runs" % ENV_VAR,
        ) from None
    return engine


def _first(exc):
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0]


def _sqlite_path(engine):
    return engine.url.database


@contextlib.contextmanager
def migration_lock(engine):
    """Serialise migrations of several processes starting at once."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_KEY})
                conn.commit()
        return
    with open(_sqlite_path(engine) + ".migrate.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class PlannerLock:
    """The one-planner-at-a-time lock. try_acquire() is cheap to call every tick."""

    def __init__(self, engine):
        self.engine = engine
        self._conn = None
        self._file = None
        self.held = False

    def try_acquire(self):
        if self.held:
            return True
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
            if got.scalar():
                conn.commit()
                self._conn, self.held = conn, True
            else:
                conn.close()
            return self.held
        f = open(_sqlite_path(self.engine) + ".planner.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file, self.held = f, True
        return True

    def release(self):
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                self._conn.close()
        if self._file is not None:
            self._file.close()
        self._conn = self._file = None
        self.held = False
