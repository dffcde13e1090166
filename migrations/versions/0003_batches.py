"""Add the batches table and the batch and output-format columns of jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("input_file_name", sa.String(255), nullable=True),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("defaults", sa.JSON(), nullable=False),
        sa.Column("response_format", sa.JSON(), nullable=True),
        sa.Column("validation_prompts", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'cancelling', 'cancelled')",
            name="ck_batches_status",
        ),
    )
    op.create_index("ix_batches_created_at_id", "batches", ["created_at", "id"])

    # SQLite cannot add a foreign key in place, so batch mode copies the table there.
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(36), nullable=True))
        batch_op.add_column(sa.Column("custom_id", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("line_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("format_ok", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("parsed_output", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("format_source", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("format_error", sa.Text(), nullable=True))
        batch_op.create_foreign_key("fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"])
        batch_op.create_index("ix_jobs_batch_id_line_number", ["batch_id", "line_number"], unique=True)
        batch_op.create_index("ix_jobs_batch_id_custom_id", ["batch_id", "custom_id"], unique=True)
        batch_op.create_index("ix_jobs_batch_id_status_line_number", ["batch_id", "status", "line_number"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_batch_id_status_line_number")
        batch_op.drop_index("ix_jobs_batch_id_custom_id")
        batch_op.drop_index("ix_jobs_batch_id_line_number")
        batch_op.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
        for column in ("format_error", "format_source", "parsed_output", "format_ok", "line_number", "custom_id", "batch_id"):
            batch_op.drop_column(column)

    op.drop_index("ix_batches_created_at_id", table_name="batches")
    op.drop_table("batches")
