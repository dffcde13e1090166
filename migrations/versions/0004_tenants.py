"""Add tenants, API keys, idempotency keys, job and batch owners, and purge timestamps.

Revision ID: 0004
Revises: 0003
Create Date: 2025-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.String(36),
            sa.ForeignKey("tenants.id", name="fk_api_keys_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "idempotency_keys",
        sa.Column(
            "tenant_id",
            sa.String(36),
            sa.ForeignKey("tenants.id", name="fk_idempotency_keys_tenant_id_tenants"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])

    # Rows stored before this revision get no tenant, so no API key can read them; they stay
    # for workers and for `slotq purge`.
    for table in ("jobs", "batches"):
        _add_owner_columns(table)
    op.create_index("ix_jobs_tenant_id_created_at_id", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_id_status_created_at_id", "jobs", ["tenant_id", "status", "created_at", "id"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_batches_tenant_id_created_at_id", "batches", ["tenant_id", "created_at", "id"])


def _add_owner_columns(table: str) -> None:
    constraint = f"fk_{table}_tenant_id_tenants"
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with a REFERENCES clause in place. Batch mode would copy the
        # table instead, and dropping the old batches table fails its foreign key from jobs.
        op.execute(f"ALTER TABLE {table} ADD COLUMN tenant_id VARCHAR(36) CONSTRAINT {constraint} REFERENCES tenants (id)")
        op.execute(f"ALTER TABLE {table} ADD COLUMN purged_at DATETIME")
        return
    op.add_column(table, sa.Column("tenant_id", sa.String(36), nullable=True))
    op.add_column(table, sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_foreign_key(constraint, table, "tenants", ["tenant_id"], ["id"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # SQLite drops these columns only by copying the tables, and dropping the old batches
        # table would fail the foreign key from jobs. The pragma takes effect because no
        # statement of this downgrade has opened a transaction yet (0004 is the first step
        # of any downgrade from it).
        op.execute("PRAGMA foreign_keys=OFF")

    op.drop_index("ix_batches_tenant_id_created_at_id", table_name="batches")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_tenant_id_status_created_at_id", table_name="jobs")
    op.drop_index("ix_jobs_tenant_id_created_at_id", table_name="jobs")
    for table in ("batches", "jobs"):
        with op.batch_alter_table(table, recreate="always" if sqlite else "auto") as batch_op:
            if not sqlite:
                batch_op.drop_constraint(f"fk_{table}_tenant_id_tenants", type_="foreignkey")
            batch_op.drop_column("purged_at")
            batch_op.drop_column("tenant_id")

    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    if sqlite:
        op.execute("PRAGMA foreign_keys=ON")
