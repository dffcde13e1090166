"""JSON representations of jobs, as the OpenAPI schemas ``Job`` and ``JobSummary`` define them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import url_for

from slotq.store import JobRecord, JobStatus


def format_time(value: datetime | None) -> str | None:
    """Return an RFC 3339 UTC timestamp with microseconds and a ``Z`` suffix, or None."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_url(job_id: str) -> str:
    """Return the path of a job's resource."""
    return url_for("jobs.get_job", job_id=job_id)


def job_summary(job: JobRecord) -> dict[str, Any]:
    """Return the list-page view of a job: status, times and counts, without texts."""
    return {
        "id": job.id,
        "status": job.status,
        "url": job_url(job.id),
        "model": job.model_name,
        "created_at": format_time(job.created_at),
        "started_at": format_time(job.started_at),
        "finished_at": format_time(job.finished_at),
        "finish_reason": job.finish_reason,
        "prompt_tokens": job.prompt_tokens,
        "output_tokens": job.output_tokens,
        "delta_norm": job.delta_norm,
        "guardrails": _guardrails(job),
        "attempts": job.attempts,
        "error": job.error,
        "purged_at": format_time(job.purged_at),
    }


def job_detail(job: JobRecord) -> dict[str, Any]:
    """Return the full view of a job: request, timestamps, timings and, once done, the result."""
    return {
        "id": job.id,
        "status": job.status,
        "url": job_url(job.id),
        "model": job.model_name,
        "request": job.request,
        "created_at": format_time(job.created_at),
        "queued_at": format_time(job.queued_at),
        "started_at": format_time(job.started_at),
        "finished_at": format_time(job.finished_at),
        "cancelled_at": format_time(job.cancelled_at),
        "result": _result(job),
        "guardrails": _guardrails(job),
        "timings_ms": job.timings_ms or {},
        "worker": job.worker,
        "attempts": job.attempts,
        "error": job.error,
        "purged_at": format_time(job.purged_at),
    }


def _guardrails(job: JobRecord) -> dict[str, Any]:
    """Return the over-fitting check and divergence of a job; null fields until a worker ran it."""
    return {
        "policy": job.overfit_policy,
        "overfit": job.overfit,
        "tolerance": job.overfit_tolerance,
        "validation_loss": job.validation_loss,
        "validation_loss_base": job.validation_loss_base,
        "validation_loss_change": job.validation_loss_change,
        "validation_loss_used": job.validation_loss_used,
        "delta_step": job.delta_step,
        "diverged_at": job.diverged_at,
        "divergence": job.divergence,
    }


def _result(job: JobRecord) -> dict[str, Any] | None:
    if job.status != JobStatus.SUCCEEDED.value:
        return None
    return {
        "output_text": job.output_text,
        "finish_reason": job.finish_reason,
        "prompt_tokens": job.prompt_tokens,
        "output_tokens": job.output_tokens,
        "delta_norm": job.delta_norm,
        "delta_dim": job.delta_dim,
        "loss_trace": job.loss_trace,
        "head_path": job.head_path,
        "steps_run": job.steps_run,
        "diverged_at": job.diverged_at,
        "seed": job.seed,
    }
