"""The first schema: event log, device logs, inventory, rollout and target projection.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
ID = 128


def upgrade():
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("rollout", sa.String(ID), nullable=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(ID), nullable=False),
        sa.Column("device_id", sa.String(ID), nullable=True),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_events_rollout", "events", ["rollout", "id"])
    op.create_table(
        "statuses",
        sa.Column("device_id", sa.String(ID), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("job_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("check_name", sa.String(64), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("ts", sa.BigInteger, nullable=True),
        sa.Column("received", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "seq"),
    )
    op.create_index("ix_statuses_job", "statuses", ["job_id", "seq"])
    op.create_table(
        "health",
        sa.Column("device_id", sa.String(ID), nullable=False),
        sa.Column("job_id", sa.String(256), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("failed", sa.Text, nullable=False),
        sa.Column("received", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "job_id", "phase", "ts"),
    )
    op.create_table(
        "inventory",
        sa.Column("device_id", sa.String(ID), primary_key=True),
        sa.Column("model", sa.String(ID), nullable=False),
        sa.Column("hardware_revision", sa.String(ID), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("grp", sa.String(ID), nullable=False),
        sa.Column("site", sa.String(ID), nullable=False),
        sa.Column("site_type", sa.String(ID), nullable=False),
        sa.Column("components", sa.Text, nullable=False),
        sa.Column("last_result", sa.String(40), nullable=True),
        sa.Column("last_version", sa.String(64), nullable=True),
        sa.Column("rollbacks", sa.Text, nullable=False),
        sa.Column("online", sa.Boolean, nullable=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("name", sa.String(ID), primary_key=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("waves", sa.Integer, nullable=False),
        sa.Column("wave_released_at", sa.Float, nullable=True),
        sa.Column("halts", sa.Text, nullable=False),
        sa.Column("approvals", sa.Text, nullable=False),
        sa.Column("needs_approval", sa.String(128), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "targets",
        sa.Column("rollout", sa.String(ID), nullable=False),
        sa.Column("device_id", sa.String(ID), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("cohort", sa.String(400), nullable=False),
        sa.Column("site", sa.String(ID), nullable=False),
        sa.Column("job_id", sa.String(256), nullable=True, unique=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("phase_since", sa.Float, nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=True),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.Column("install_at", sa.BigInteger, nullable=True),
        sa.Column("committed_at", sa.Float, nullable=True),
        sa.Column("cancel_sent", sa.Boolean, nullable=False),
        sa.Column("result", sa.String(40), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("rollout", "device_id"),
    )
    op.create_index("ix_targets_state", "targets", ["rollout", "state"])


def downgrade():
    for name in ("targets", "rollouts", "inventory", "health", "statuses", "events"):
        op.drop_table(name)
