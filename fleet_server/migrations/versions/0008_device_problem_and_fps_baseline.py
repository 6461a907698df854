"""device problem and fps baseline

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 17:52:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("problem", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("fps_baseline", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("fps_baseline")
        batch_op.drop_column("problem")
