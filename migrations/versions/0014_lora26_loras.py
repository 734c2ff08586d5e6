"""LoRA adapters: the registered ones (``loras``), a job's (``jobs.loras``), the transformer modules a model's workers
publish for checking them (``model_catalogue.lora_modules``), and the adapter set a frontier was measured with
(``frontier_points.adapters``, part of a setting's identity).

Revision ID: 0014_lora26_loras
Revises: 0014_gpus29_worker_devices
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.db.models import UTCDateTime

# revision identifiers, used by Alembic.
revision: str = "0014_lora26_loras"
down_revision: str | Sequence[str] | None = "0014_gpus29_worker_devices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SETTING_COLUMNS = ["model", "width", "height", "num_frames", "num_inference_steps", "setting"]


def upgrade() -> None:
    op.create_table(
        "loras",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=300), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("modules", sa.JSON(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("loras", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("model_catalogue") as batch:
        batch.add_column(sa.Column("lora_modules", sa.JSON(), nullable=True))
    with op.batch_alter_table("frontier_points") as batch:
        batch.add_column(sa.Column("adapters", sa.String(length=1000), nullable=False, server_default=""))
        batch.drop_index("ix_frontier_points_setting")
        batch.create_index("ix_frontier_points_setting", [*SETTING_COLUMNS[:5], "adapters", "setting"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("frontier_points") as batch:
        batch.drop_index("ix_frontier_points_setting")
        batch.create_index("ix_frontier_points_setting", SETTING_COLUMNS, unique=True)
        batch.drop_column("adapters")
    with op.batch_alter_table("model_catalogue") as batch:
        batch.drop_column("lora_modules")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("loras")
    op.drop_table("loras")
