"""Plain snapshots of stored jobs, safe to use after their session has closed."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slotq.store.models import Job


@dataclass(frozen=True)
class JobRecord:
    """A job as stored when it was read; see `slotq.store.models.Job` for each column."""

    id: str
    status: str
    request: dict[str, Any]
    prompt: str | None
    messages: list[dict[str, str]] | None
    slot_steps: int
    slot_lr: float
    generation: dict[str, Any]
    metadata: dict[str, Any]
    model_name: str
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    output_text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    delta_norm: float | None
    delta: bytes | None
    delta_dim: int | None
    loss_trace: list[float] | None
    timings_ms: dict[str, float] | None
    head_path: str | None
    steps_run: int | None
    diverged_at: int | None
    seed: int | None
    divergence: str | None
    validation_loss: float | None
    validation_loss_base: float | None
    validation_loss_change: float | None
    validation_loss_used: float | None
    overfit: bool | None
    overfit_policy: str | None
    overfit_tolerance: float | None
    delta_step: int | None
    worker: str | None
    attempts: int
    error: str | None
    lease_expires_at: datetime | None
    enqueued_at: datetime | None
    batch_id: str | None
    custom_id: str | None
    line_number: int | None
    format_ok: bool | None
    parsed_output: Any
    format_source: str | None
    format_error: str | None
    tenant_id: str | None
    purged_at: datetime | None

    @classmethod
    def from_row(cls, job: Job) -> JobRecord:
        """Copy every column of ``job`` into a record."""
        values = {name: getattr(job, name) for name in cls.__dataclass_fields__ if name != "metadata"}
        return cls(metadata=job.job_metadata, **values)


class CancelResult(str, enum.Enum):
    """Outcome kind of `cancel_job`."""

    CANCELLED = "cancelled"  # the job was queued and is now cancelled
    RUNNING = "running"  # a worker runs it; it will finish and store its result
    FINISHED = "finished"  # it had already succeeded, failed or been cancelled
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CancelOutcome:
    """Result of a cancel request and the job as stored afterwards (None when not found)."""

    result: CancelResult
    job: JobRecord | None

    @property
    def cancelled(self) -> bool:
        """True when this call moved the job from queued to cancelled."""
        return self.result is CancelResult.CANCELLED
