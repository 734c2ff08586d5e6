"""Jobs name their model and priority; dispatch, progress and expected figures; one row per run of a job.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime
from core.settings import get_settings

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # Jobs from before models could be named ran on the one configured model.
        batch.add_column(
            sa.Column("model", sa.String(length=100), nullable=False, server_default=get_settings().default_model)
        )
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.alter_column("enqueued_at", new_column_name="dispatched_at")
        batch.add_column(sa.Column("progress_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("expected", sa.JSON(), nullable=True))
        batch.create_index(
            "ix_jobs_model_status_owner", ["model", "status", "owner_id", "priority", "created_at"], unique=False
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("model", server_default=None)
        batch.alter_column("priority", server_default=None)
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(length=20), nullable=True))
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_runs_job", "job_runs", ["job_id", "attempt"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_runs_job", table_name="job_runs")
    op.drop_table("job_runs")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("stop_reason")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_model_status_owner")
        batch.drop_column("expected")
        batch.drop_column("progress_at")
        batch.alter_column("dispatched_at", new_column_name="enqueued_at")
        batch.drop_column("priority")
        batch.drop_column("model")
