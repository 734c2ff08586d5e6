"""The model catalogue that GPU workers publish (so the API needs no model files), and the checks a job's
submit left to its worker.

Revision ID: 0008_model_catalogue
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0008_model_catalogue"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_catalogue",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("default_shape", sa.JSON(), nullable=False),
        sa.Column("block_count", sa.Integer(), nullable=True),
        sa.Column("transformer", sa.JSON(), nullable=False),
        sa.Column("strategies", sa.JSON(), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=False),
        sa.Column("described_by", sa.String(length=200), nullable=False),
        sa.Column("described_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pending_checks", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pending_checks")
    op.drop_table("model_catalogue")
