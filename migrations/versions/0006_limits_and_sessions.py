"""Per-key limits on api_keys; admin dashboard sessions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMIT_COLUMNS = (
    ("max_pixels", sa.BigInteger()),
    ("max_frames", sa.Integer()),
    ("max_steps", sa.Integer()),
    ("max_cost", sa.BigInteger()),
    ("rate_per_second", sa.Float()),
    ("rate_burst", sa.Integer()),
    ("max_active_jobs", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for name, type_ in LIMIT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_admin_sessions_key", "admin_sessions", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_admin_sessions_key", table_name="admin_sessions")
    op.drop_table("admin_sessions")
    with op.batch_alter_table("api_keys") as batch:
        for name, _type in reversed(LIMIT_COLUMNS):
            batch.drop_column(name)
