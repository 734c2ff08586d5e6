"""When each API key last had a job of each model started: the round-robin order across keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_turns",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("last_started_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("owner_id", "model"),
    )


def downgrade() -> None:
    op.drop_table("key_turns")
