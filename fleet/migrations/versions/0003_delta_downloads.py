"""Delta downloads (agent issue 15): a status keeps the bytes a delta install fetched so far and
the payload size; a target keeps its latest, so `rollout status` shows what the rollout cost.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("statuses") as batch:
        batch.add_column(sa.Column("downloaded", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("payload_bytes", sa.BigInteger, nullable=True))
    with op.batch_alter_table("targets") as batch:
        batch.add_column(sa.Column("downloaded", sa.BigInteger, nullable=True))


def downgrade():
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("downloaded")
    with op.batch_alter_table("statuses") as batch:
        batch.drop_column("payload_bytes")
        batch.drop_column("downloaded")
