"""What the catalogue knows of a model's pipeline: its class and the config values a submit reads (whether it
takes an image, the boundary between Wan2.2's two experts, the scheduler's shift); a job's input image (its
storage key, and the URL it was given by).

Revision ID: 0012_image_models
Revises: 0011_frontier
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012_image_models"
down_revision: str | Sequence[str] | None = "0011_frontier"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_catalogue") as batch:
        batch.add_column(sa.Column("pipeline", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_image_key", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("input_image_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("input_image_url")
        batch.drop_column("input_image_key")
    with op.batch_alter_table("model_catalogue") as batch:
        batch.drop_column("pipeline")
