"""per-slot reported state of a device, the cameras a deployment assigns to its slot, the order of reports

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 00:00:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deviceslot",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("slot", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("target_version", sa.Integer(), nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("shadow_version", sa.Integer(), nullable=True),
        sa.Column("shadow_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("sources_json", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("latency_ms_p95", sa.Float(), nullable=True),
        sa.Column("staleness_ms_p99", sa.Float(), nullable=True),
        sa.Column("telemetry_json", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id", "slot"),
    )
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sources_json", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reported_boot", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("reported_seq", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("reported_seq")
        batch_op.drop_column("reported_boot")
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_column("sources_json")
    op.drop_table("deviceslot")
