"""target measurements by the fleet, the serving target per device, a deployment's measure budget

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 21:00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "targetmeasurement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("hardware_key", sa.String(length=200), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.Column("chosen", sa.Boolean(), nullable=False),
        sa.Column("measured_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["modelversion.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "device_id", "target", name="uq_measurement"),
    )
    op.create_index("ix_targetmeasurement_version_id", "targetmeasurement", ["version_id"])
    op.create_index("ix_targetmeasurement_device_id", "targetmeasurement", ["device_id"])
    op.create_index("ix_targetmeasurement_hardware_key", "targetmeasurement", ["hardware_key"])
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("target_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("detail", sa.String(length=200), nullable=True))
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("measure_budget_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("measure_budget_s")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("detail")
        batch_op.drop_column("target_reason")
        batch_op.drop_column("target")
    op.drop_index("ix_targetmeasurement_hardware_key", table_name="targetmeasurement")
    op.drop_index("ix_targetmeasurement_device_id", table_name="targetmeasurement")
    op.drop_index("ix_targetmeasurement_version_id", table_name="targetmeasurement")
    op.drop_table("targetmeasurement")
