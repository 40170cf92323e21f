"""The model store: versions, deployments, audit, reviews and shadow scores.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(12), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("parent", sa.String(12)),
        sa.Column("fit_manifest", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(100), nullable=False),
        sa.Column("note", sa.String(500)),
    )
    op.create_table(
        "deployments",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("slot", sa.String(8), nullable=False),
        sa.Column("version", sa.String(12)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(100), nullable=False),
    )
    op.create_index("ix_deployments_target", "deployments", ["target"])
    op.create_table(
        "audit",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(100)),
        sa.Column("version", sa.String(12)),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "reviews",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", ROW_ID, sa.ForeignKey("inspections.id"), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("defect_type", sa.String(100)),
        sa.Column("note", sa.String(500)),
        sa.Column("reviewer", sa.String(100), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reviews_inspection_id", "reviews", ["inspection_id"])
    op.create_table(
        "shadow_scores",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", ROW_ID, sa.ForeignKey("inspections.id"), nullable=False),
        sa.Column("model_version", sa.String(12), nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("verdict", sa.String(16)),
        sa.Column("threshold", sa.Double),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_shadow_scores_inspection_id", "shadow_scores", ["inspection_id"])
    op.create_index("ix_shadow_scores_model_version", "shadow_scores", ["model_version"])


def downgrade() -> None:
    for table in ("shadow_scores", "reviews", "audit", "deployments", "model_versions"):
        op.drop_table(table)
