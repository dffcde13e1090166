"""Add job leases and the time of the last send to the broker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_status_lease_expires_at", ["status", "lease_expires_at"])
        batch.create_index("ix_jobs_status_enqueued_at", ["status", "enqueued_at"])

    # Queued jobs of earlier revisions were sent when they were queued; without this the sweeper
    # would take them for never-sent jobs and send each a second time.
    op.execute("UPDATE jobs SET enqueued_at = queued_at WHERE status = 'queued'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_enqueued_at")
        batch.drop_index("ix_jobs_status_lease_expires_at")
        batch.drop_column("enqueued_at")
        batch.drop_column("lease_expires_at")
