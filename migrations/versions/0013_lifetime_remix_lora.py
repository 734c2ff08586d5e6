"""A video's lifetime (retention per key, when a job's objects expire and were deleted); remixes (the job a job
was made from).

Revision ID: 0013_lifetime_remix_lora
Revises: 0011_frontier
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0013_lifetime_remix_lora"
down_revision: str | Sequence[str] | None = "0012_image_models"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("retention_hours", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("expired_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_jobs_expiry", ["expired_at", "expires_at"])
        batch.add_column(sa.Column("remix_of", sa.Uuid(), nullable=True))
        batch.create_foreign_key("fk_jobs_remix_of", "jobs", ["remix_of"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_remix_of", type_="foreignkey")
        batch.drop_column("remix_of")
        batch.drop_index("ix_jobs_expiry")
        batch.drop_column("expired_at")
        batch.drop_column("expires_at")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("retention_hours")
