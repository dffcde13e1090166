"""JSON representations of batches and of their results lines, as the OpenAPI schemas define them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import url_for

from api.views import format_time, job_url
from slotq.store import BatchCounts, BatchRecord, BatchResult, JobStatus
from slotq.store.models import utcnow


def batch_url(batch_id: str) -> str:
    """Return the path of a batch's resource."""
    return url_for("batches.get_batch", batch_id=batch_id)


def results_url(batch_id: str) -> str:
    """Return the path of a batch's results download."""
    return url_for("batches.get_results", batch_id=batch_id)


def batch_detail(batch: BatchRecord, now: datetime | None = None) -> dict[str, Any]:
    """Return the status view of a batch; ``batch.counts`` must be set."""
    counts = batch.counts
    return {
        "id": batch.id,
        "status": batch.status,
        "url": batch_url(batch.id),
        "results_url": results_url(batch.id),
        "model": batch.model_name,
        "input_file_name": batch.input_file_name,
        "line_count": batch.line_count,
        "skipped_count": batch.skipped_count,
        "counts": counts.by_status,
        "finished": counts.finished,
        "progress": round(counts.finished / counts.total, 6) if counts.total else 0.0,
        "estimated_seconds_left": estimated_seconds_left(counts, now or utcnow()),
        "format": _format_summary(batch, counts),
        "overfit_count": counts.overfit,
        "created_at": format_time(batch.created_at),
        "started_at": format_time(batch.started_at),
        "finished_at": format_time(batch.finished_at),
        "cancelled_at": format_time(batch.cancelled_at),
        "defaults": batch.defaults,
        "response_format": batch.response_format,
        "validation_prompt_count": len(batch.validation_prompts) if batch.validation_prompts else 0,
        "metadata": batch.metadata,
    }


def estimated_seconds_left(counts: BatchCounts, now: datetime) -> float | None:
    """Estimate the seconds until every job of the batch has finished.

    The estimate is unfinished jobs times the mean time per job that ran to the end, where the
    mean is the wall time since the batch's first job started divided by those jobs. Dividing
    wall time (not summed run time) accounts for workers running jobs in parallel or in SLOT
    batches. Returns 0 when nothing is left and None before any job ran to the end.
    """
    if counts.unfinished == 0:
        return 0.0
    if counts.ran == 0 or counts.first_started_at is None:
        return None
    elapsed_s = max((now - counts.first_started_at).total_seconds(), 0.0)
    return round(counts.unfinished * elapsed_s / counts.ran, 1)


def result_line(result: BatchResult) -> dict[str, Any]:
    """Return one line of the results download."""
    return {
        "custom_id": result.custom_id,
        "line": result.line_number,
        "job_id": result.job_id,
        "job_url": job_url(result.job_id),
        "status": result.status,
        "output": result.output_text,
        "parsed_output": result.parsed_output,
        "format": _format_check(result),
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens,
        "delta_norm": result.delta_norm,
        "overfit": result.overfit,
        "timings_ms": result.timings_ms or {},
        "started_at": format_time(result.started_at),
        "finished_at": format_time(result.finished_at),
        "error": result.error,
    }


def _format_check(result: BatchResult) -> dict[str, Any] | None:
    if result.format_ok is None:
        return None
    return {"ok": result.format_ok, "source": result.format_source, "error": result.format_error}


def _format_summary(batch: BatchRecord, counts: BatchCounts) -> dict[str, Any] | None:
    if batch.response_format is None:
        return None
    succeeded = counts.by_status[JobStatus.SUCCEEDED.value]
    rate = round(counts.format_ok / counts.format_checked, 6) if counts.format_checked else None
    return {
        "type": batch.response_format["type"],
        "checked": counts.format_checked,
        "compliant": counts.format_ok,
        "compliance_rate": rate,
        "unchecked_succeeded": succeeded - counts.format_checked,
    }
