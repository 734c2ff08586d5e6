"""Measured speed/fidelity frontiers and the fidelity receipts of sampled jobs.

Revision ID: 0011_frontier
Revises: 0008_model_catalogue
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0011_frontier"
down_revision: str | Sequence[str] | None = "0008_model_catalogue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "frontier_points",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("num_frames", sa.Integer(), nullable=False),
        sa.Column("num_inference_steps", sa.Integer(), nullable=False),
        sa.Column("guidance_scale", sa.Float(), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("setting", sa.String(length=1000), nullable=False),
        sa.Column("computed_calls", sa.Float(), nullable=False),
        sa.Column("total_calls", sa.Integer(), nullable=False),
        sa.Column("speedup", sa.Float(), nullable=False),
        sa.Column("denoise_seconds", sa.Float(), nullable=False),
        sa.Column("baseline_denoise_seconds", sa.Float(), nullable=False),
        sa.Column("psnr_min", sa.Float(), nullable=False),
        sa.Column("psnr_mean", sa.Float(), nullable=False),
        sa.Column("ssim_min", sa.Float(), nullable=False),
        sa.Column("ssim_mean", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("receipts", sa.Integer(), nullable=False),
        sa.Column("measured_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_frontier_points_setting",
        "frontier_points",
        ["model", "width", "height", "num_frames", "num_inference_steps", "setting"],
        unique=True,
    )
    op.create_table(
        "fidelity_receipts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("point_id", sa.Uuid(), nullable=True),
        sa.Column("psnr", sa.Float(), nullable=False),
        sa.Column("ssim", sa.Float(), nullable=False),
        sa.Column("predicted_psnr", sa.Float(), nullable=True),
        sa.Column("predicted_ssim", sa.Float(), nullable=True),
        sa.Column("shortfall", sa.Boolean(), nullable=False),
        sa.Column("measured_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["point_id"], ["frontier_points.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index("ix_fidelity_receipts_model_measured", "fidelity_receipts", ["model", "measured_at"])


def downgrade() -> None:
    op.drop_index("ix_fidelity_receipts_model_measured", table_name="fidelity_receipts")
    op.drop_table("fidelity_receipts")
    op.drop_index("ix_frontier_points_setting", table_name="frontier_points")
    op.drop_table("frontier_points")
