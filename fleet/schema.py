"""The controller's tables, one definition for SQLite and PostgreSQL (SQLAlchemy Core).

Invariant: `events` is append-only and, with the device-reported `statuses` and `health` logs,
is the whole truth; `rollouts` and `targets` are a projection of them that
fleet/projection.py can rebuild from scratch. `inventory` mirrors the retained MQTT rows.
Migrations (fleet/migrations) create exactly these tables; a test compares the two.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()
ID = 128  # device ids, site ids, rollout names

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("rollout", String(ID), nullable=True),
    Column("kind", String(40), nullable=False),
    Column("actor", String(ID), nullable=False),
    Column("device_id", String(ID), nullable=True),
    Column("data", Text, nullable=False),
    Index("ix_events_rollout", "rollout", "id"),
)

statuses = Table(
    "statuses",
    metadata,
    Column("device_id", String(ID), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("job_id", String(256), nullable=True),
    Column("status", String(40), nullable=False),
    Column("reason", Text, nullable=True),
    Column("check_name", String(64), nullable=True),
    Column("cause", String(40), nullable=True),  # RolledBack: whom it blames (0002)
    Column("version", String(64), nullable=True),
    Column("ts", BigInteger, nullable=True),
    Column("received", Float, nullable=False),
    # A delta install's Installing statuses: bytes fetched so far, payload size (0003).
    Column("downloaded", BigInteger, nullable=True),
    Column("payload_bytes", BigInteger, nullable=True),
    PrimaryKeyConstraint("device_id", "seq"),
    Index("ix_statuses_job", "job_id", "seq"),
)

health = Table(
    "health",
    metadata,
    Column("device_id", String(ID), nullable=False),
    Column("job_id", String(256), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("failed", Text, nullable=False),
    Column("received", Float, nullable=False),
    PrimaryKeyConstraint("device_id", "job_id", "phase", "ts"),
)

inventory = Table(
    "inventory",
    metadata,
    Column("device_id", String(ID), primary_key=True),
    Column("model", String(ID), nullable=False),
    Column("hardware_revision", String(ID), nullable=False),
    Column("version", String(64), nullable=True),
    Column("grp", String(ID), nullable=False),
    Column("site", String(ID), nullable=False),
    Column("site_type", String(ID), nullable=False),
    Column("components", Text, nullable=False),
    Column("last_result", String(40), nullable=True),
    Column("last_version", String(64), nullable=True),
    Column("rollbacks", Text, nullable=False),
    Column("power_loss_rollbacks", Text, nullable=False, server_default="[]"),  # 0002
    Column("security_floor", BigInteger, nullable=True),  # 0002
    Column("online", Boolean, nullable=True),
    Column("ts", BigInteger, nullable=False),
    Column("seen", Float, nullable=False),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("name", String(ID), primary_key=True),
    Column("state", String(24), nullable=False),
    Column("spec", Text, nullable=False),
    Column("release", Text, nullable=False),
    Column("wave", Integer, nullable=False),
    Column("waves", Integer, nullable=False),
    Column("wave_released_at", Float, nullable=True),
    Column("halts", Text, nullable=False),
    Column("approvals", Text, nullable=False),
    Column("needs_approval", String(128), nullable=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)

targets = Table(
    "targets",
    metadata,
    Column("rollout", String(ID), nullable=False),
    Column("device_id", String(ID), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("cohort", String(400), nullable=False),
    Column("site", String(ID), nullable=False),
    Column("job_id", String(256), nullable=True, unique=True),
    Column("state", String(24), nullable=False),
    Column("phase_since", Float, nullable=True),
    Column("last_seq", BigInteger, nullable=True),
    Column("sent_at", Float, nullable=True),
    Column("install_at", BigInteger, nullable=True),
    Column("committed_at", Float, nullable=True),
    Column("cancel_sent", Boolean, nullable=False),
    Column("result", String(40), nullable=True),
    Column("reason", Text, nullable=True),
    Column("downloaded", BigInteger, nullable=True),  # by delta, its latest status (0003)
    PrimaryKeyConstraint("rollout", "device_id"),
    Index("ix_targets_state", "rollout", "state"),
)

PROJECTION = (rollouts, targets)
