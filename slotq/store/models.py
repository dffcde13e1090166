"""SQLAlchemy 2 models of the job store."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class JobStatus(str, enum.Enum):
    """Lifecycle of a job: queued -> running -> succeeded | failed, or queued -> cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUSES = tuple(status.value for status in JobStatus)
FINISHED_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class BatchStatus(str, enum.Enum):
    """Lifecycle of a batch, derived from its jobs whenever the batch is read.

    queued: no job has started. running: some job has started and some job is not finished.
    completed: every job is finished. cancelling: cancel was requested and some jobs still run.
    cancelled: cancel was requested and every job is finished.
    """

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


BATCH_STATUSES = tuple(status.value for status in BatchStatus)
FINISHED_BATCH_STATUSES = (BatchStatus.COMPLETED.value, BatchStatus.CANCELLED.value)

#: Longest ``custom_id`` of a batch line, in characters.
MAX_CUSTOM_ID_CHARS = 200


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamp stored in UTC and always returned as an aware UTC datetime.

    Postgres stores ``timestamp with time zone``. SQLite has no time zones, so the value is stored
    as naive UTC text, which sorts in time order because every value has the same format.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; pass an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every table in the job store."""


class Job(Base):
    """One generation job: the request, its lifecycle timestamps and its result."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_jobs_status",
        ),
        # Newest-first listing, with and without a status filter; id breaks ties of created_at.
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        # Newest-first listing of over-fitted (or checked and not over-fitted) jobs.
        Index("ix_jobs_overfit_created_at_id", "overfit", "created_at", "id"),
        # Results in input order, and per-batch counts and the first unfinished line.
        Index("ix_jobs_batch_id_line_number", "batch_id", "line_number", unique=True),
        Index("ix_jobs_batch_id_custom_id", "batch_id", "custom_id", unique=True),
        Index("ix_jobs_batch_id_status_line_number", "batch_id", "status", "line_number"),
        # Newest-first listing of one tenant's jobs, with and without a status filter.
        Index("ix_jobs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_id_status_created_at_id", "tenant_id", "status", "created_at", "id"),
        # Old finished jobs whose texts have not been purged yet.
        Index("ix_jobs_finished_at", "finished_at"),
        # The sweeper's scans: running jobs whose lease expired, queued jobs never sent or sent
        # longest ago.
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))

    # The validated request with defaults filled in, as `JobRequest.to_dict` returns it.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    slot_steps: Mapped[int] = mapped_column(Integer)
    slot_lr: Mapped[float] = mapped_column(Float)
    generation: Mapped[dict[str, Any]] = mapped_column(JSON)
    # "metadata" is reserved on declarative classes, so the attribute has another name.
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    model_name: Mapped[str] = mapped_column(String(255))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    output_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    delta_norm: Mapped[float | None] = mapped_column(Float)
    # float32 little-endian, delta_dim values (the model's hidden size).
    delta: Mapped[bytes | None] = mapped_column(LargeBinary)
    delta_dim: Mapped[int | None] = mapped_column(Integer)
    loss_trace: Mapped[list[float] | None] = mapped_column(JSON)
    # Milliseconds: queue_wait (set on claim), prefill, optimize, decode, total (set on success).
    timings_ms: Mapped[dict[str, float] | None] = mapped_column(JSON)
    head_path: Mapped[str | None] = mapped_column(String(32))
    # AdamW steps applied to the stored delta, the step whose loss or delta was not finite (if
    # any), and the sampler seed actually used, so a sampled output can be reproduced.
    steps_run: Mapped[int | None] = mapped_column(Integer)
    diverged_at: Mapped[int | None] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    # What happened when the loss or delta stopped being finite at step diverged_at.
    divergence: Mapped[str | None] = mapped_column(Text)

    # Over-fitting check, null until a worker ran it. Losses are mean next-token losses of the
    # validation prompts: with the fitted delta, with delta = 0, and with the delta decoded (the
    # delta of step delta_step, an earlier step under the fallback policy). validation_loss_change
    # is (validation_loss - validation_loss_base) / validation_loss_base. A loss or change that was
    # not finite is stored as null. overfit is true when the change was above overfit_tolerance
    # or the loss was not finite; overfit_policy is set from the request when the job is created.
    validation_loss: Mapped[float | None] = mapped_column(Float)
    validation_loss_base: Mapped[float | None] = mapped_column(Float)
    validation_loss_change: Mapped[float | None] = mapped_column(Float)
    validation_loss_used: Mapped[float | None] = mapped_column(Float)
    overfit: Mapped[bool | None] = mapped_column(Boolean)
    overfit_policy: Mapped[str | None] = mapped_column(String(16))
    overfit_tolerance: Mapped[float | None] = mapped_column(Float)
    delta_step: Mapped[int | None] = mapped_column(Integer)

    worker: Mapped[str | None] = mapped_column(String(255))
    # Claims so far; the worker of attempt N writes its outcome only while attempts is still N.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # While running: the lease that the worker renews. Once it passes, the sweeper takes the
    # worker for lost and queues the job again, or fails it after its last attempt.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While queued: when a task message for the job was last sent to the broker. Null means no
    # send has succeeded since the job was (re)queued, so the sweeper sends one.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Set for jobs submitted in a batch: line_number is the 1-based line (or array position)
    # of the request in the upload, so ordering by it gives the input order.
    batch_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("batches.id", name="fk_jobs_batch_id_batches")
    )
    custom_id: Mapped[str | None] = mapped_column(String(MAX_CUSTOM_ID_CHARS))
    line_number: Mapped[int | None] = mapped_column(Integer)
    # Output format check, stored with the result when the batch has a response_format.
    format_ok: Mapped[bool | None] = mapped_column(Boolean)
    parsed_output: Mapped[Any | None] = mapped_column(JSON)
    format_source: Mapped[str | None] = mapped_column(String(16))
    format_error: Mapped[str | None] = mapped_column(Text)

    # Owner of the job; null only for jobs stored before tenants existed, which no key can read.
    tenant_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tenants.id", name="fk_jobs_tenant_id_tenants")
    )
    # When `slotq purge` removed the prompt, messages, output and δ; metrics stay.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Batch(Base):
    """A bulk upload of job requests that share defaults, a response format and validation prompts.

    Counts, progress and the status come from the batch's jobs; ``status``, ``started_at`` and
    ``finished_at`` are stored copies that each read of the batch refreshes.
    """

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'cancelling', 'cancelled')",
            name="ck_batches_status",
        ),
        Index("ix_batches_created_at_id", "created_at", "id"),
        Index("ix_batches_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(255))
    # Name of the uploaded file as the client gave it (any Unicode), for people only.
    input_file_name: Mapped[str | None] = mapped_column(String(255))
    # Jobs created, and invalid lines left out because the client asked to skip them.
    line_count: Mapped[int] = mapped_column(Integer)
    skipped_count: Mapped[int] = mapped_column(Integer)

    # Request fields merged under every line's request, as submitted.
    defaults: Mapped[dict[str, Any]] = mapped_column(JSON)
    # {"type": "json_schema", "schema": ...} or {"type": "regex", "pattern": ...}, or null.
    response_format: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Chat message lists, one per held-out prompt, or null for the workers' default set.
    validation_prompts: Mapped[list[list[dict[str, str]]] | None] = mapped_column(JSON)
    batch_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When cancel was requested; queued jobs were cancelled at that time.
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tenant_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tenants.id", name="fk_batches_tenant_id_tenants")
    )
    # When `slotq purge` removed the validation prompts.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Tenant(Base):
    """A client organisation: it owns API keys, jobs and batches, and sees only its own."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """An API key of a tenant, stored as the SHA-256 of the key; the key itself is never stored.

    ``prefix`` is the start of the key (public, shown in listings) and finds the candidate rows;
    the hash is then compared in constant time.
    """

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_prefix", "prefix"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", name="fk_api_keys_tenant_id_tenants")
    )
    prefix: Mapped[str] = mapped_column(String(16))
    # Hex SHA-256 of the whole key.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyRecord(Base):
    """The first response to a submit that carried an ``Idempotency-Key``, kept until ``expires_at``.

    The primary key (tenant_id, key) makes two racing submits with one key end with one stored
    job or batch: the second transaction fails on the key and rolls its rows back.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", name="fk_idempotency_keys_tenant_id_tenants"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Hex SHA-256 of what was submitted: the route, the query and the canonical body.
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(36))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
