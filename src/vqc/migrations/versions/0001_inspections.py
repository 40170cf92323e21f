"""The inspections table.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

# Plain column types here, not vqc.records' classes: a migration must stay as it was written
# when those change (UTCDateTime only converts values in Python; the column is the same).


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("station", sa.String(100)),
        sa.Column("part_id", sa.String(100)),
        sa.Column("filename", sa.String(255)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("normalised_score", sa.Double, nullable=False),
        sa.Column("verdict", sa.String(16)),
        sa.Column("threshold", sa.Double),
        sa.Column("policy", sa.String(100)),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("vqc_version", sa.String(32), nullable=False),
        sa.Column("engine", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("image_path", sa.String(255)),
        sa.Column("overlay_path", sa.String(255)),
    )
    op.create_index("ix_inspections_inspected_at", "inspections", ["inspected_at"])
    op.create_index("ix_inspections_station", "inspections", ["station"])


def downgrade() -> None:
    op.drop_table("inspections")
