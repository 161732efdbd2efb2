"""Rollback causes (agent issue 18): a status keeps its `cause`; an inventory row keeps the
versions power cuts rolled back (they may be offered again) and the anti-rollback floor.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("statuses") as batch:
        batch.add_column(sa.Column("cause", sa.String(40), nullable=True))
    with op.batch_alter_table("inventory") as batch:
        batch.add_column(
            sa.Column("power_loss_rollbacks", sa.Text, nullable=False, server_default="[]")
        )
        batch.add_column(sa.Column("security_floor", sa.BigInteger, nullable=True))


def downgrade():
    with op.batch_alter_table("inventory") as batch:
        batch.drop_column("security_floor")
        batch.drop_column("power_loss_rollbacks")
    with op.batch_alter_table("statuses") as batch:
        batch.drop_column("cause")
