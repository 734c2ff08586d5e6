"""Workers spanning several devices: each rank's device and the parallelism they share a job with.

Revision ID: 0014_gpus29_worker_devices
Revises: 0013_lifetime_remix_lora
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014_gpus29_worker_devices"
down_revision: str | Sequence[str] | None = "0013_lifetime_remix_lora"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("devices", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("parallelism", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("parallelism")
        batch.drop_column("devices")
