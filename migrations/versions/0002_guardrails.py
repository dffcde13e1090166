"""Add the over-fitting check and divergence columns to jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLOAT_COLUMNS = (
    "validation_loss",
    "validation_loss_base",
    "validation_loss_change",
    "validation_loss_used",
    "overfit_tolerance",
)


def upgrade() -> None:
    # Every new column is nullable, so rows of jobs that ran before this revision stay valid
    # and read as "not checked".
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("divergence", sa.Text(), nullable=True))
        for name in FLOAT_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(sa.Column("overfit", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("overfit_policy", sa.String(16), nullable=True))
        batch.add_column(sa.Column("delta_step", sa.Integer(), nullable=True))
        batch.create_index("ix_jobs_overfit_created_at_id", ["overfit", "created_at", "id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_overfit_created_at_id")
        batch.drop_column("delta_step")
        batch.drop_column("overfit_policy")
        batch.drop_column("overfit")
        for name in reversed(FLOAT_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("divergence")
