"""SQLAlchemy 2 models of the job store."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Float, Index, Integer, LargeBinary, String, Text
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

    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
