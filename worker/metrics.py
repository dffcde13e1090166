"""Prometheus metrics of ``slotq worker``: queue wait, stage durations, tokens per second, δ norms,
over-fit flags, retries, batch sizes and GPU memory.

The pool processes that run jobs record the metrics. With a metrics port, ``slotq worker`` puts
prometheus_client in multiprocess mode before this module is imported
(`slotq.metrics.prepare_multiprocess_dir`), so every pool process writes its samples to files,
and `start_metrics_server` serves their sum from the worker's main process.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from slotq.metrics import SECONDS_BUCKETS, remove_dead_process_gauges, serve_metrics

logger = logging.getLogger(__name__)

#: Stages of ``timings_ms`` (milliseconds) exported as ``slotq_job_stage_seconds{stage}``.
#: ``validation`` is exported only for jobs whose timings contain it.
STAGES = ("prefill", "optimize", "validation", "decode", "total")
#: Output tokens per second of decoding: a small model on a CPU to a large batch on a GPU.
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
#: L2 norm of δ: about lr × steps × sqrt(hidden size) for AdamW steps of full size.
DELTA_NORM_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: Jobs per SLOT batch, up to the largest SLOTQ_WORKER_BATCH_SIZE.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Metrics of this process, on a registry of their own so that single-process readers (the
# tests) see them without other libraries' metrics.
REGISTRY = CollectorRegistry()

QUEUE_WAIT = Histogram(
    "slotq_job_queue_wait_seconds",
    "Time from queueing a job until a worker claimed it.",
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "slotq_job_stage_seconds",
    "Wall-clock time of one stage of a succeeded job; jobs of one SLOT batch share their stage times.",
    ["stage"],
    buckets=SECONDS_BUCKETS,
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "slotq_job_tokens_per_second",
    "Output tokens of a succeeded job divided by its decode time; a batch's jobs share that time.",
    buckets=TOKENS_PER_SECOND_BUCKETS,
    registry=REGISTRY,
)
DELTA_NORM = Histogram(
    "slotq_job_delta_norm",
    "L2 norm of the fitted delta of succeeded jobs that ran at least one optimizer step.",
    buckets=DELTA_NORM_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "slotq_jobs_finished",
    "Outcomes that workers produced, by status (succeeded or failed), stored or not.",
    ["status"],
    registry=REGISTRY,
)
OVERFIT = Counter(
    "slotq_job_overfit",
    "Over-fitting checks of jobs with steps > 0, by result (true: flagged as over-fitted).",
    ["overfit"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "slotq_job_retries",
    "Claims of jobs that had been started before (attempt 2 or later).",
    registry=REGISTRY,
)
BATCH_JOBS = Histogram(
    "slotq_worker_batch_jobs",
    "Jobs that a worker process ran as one SLOT batch.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
for _status in ("succeeded", "failed"):
    JOBS_FINISHED.labels(status=_status)
for _flag in ("true", "false"):
    OVERFIT.labels(overfit=_flag)

# Created on the first reading in a process that uses CUDA, so that a worker without CUDA
# exports no GPU metrics at all. Each is (allocated, max_allocated).
_gpu_gauges: tuple[Gauge, Gauge] | None = None


def record_claim(record: Any) -> None:
    """Record a claimed job (`slotq.store.JobRecord`): its queue wait, and a retry if attempt > 1."""
    queue_wait_ms = (record.timings_ms or {}).get("queue_wait")
    if _is_finite(queue_wait_ms):
        QUEUE_WAIT.observe(queue_wait_ms / 1000.0)
    if record.attempts > 1:
        RETRIES.inc()


def record_outcome(outcome: Any) -> None:
    """Record one job's outcome (`worker.execution.JobOutcome`) before it is stored."""
    JOBS_FINISHED.labels(status="failed" if outcome.error is not None else "succeeded").inc()
    if outcome.guard is not None:
        OVERFIT.labels(overfit="true" if outcome.guard.get("overfit") else "false").inc()
    if outcome.fields is None:
        return

    fields = outcome.fields
    timings_ms = fields.get("timings_ms") or {}
    for stage in STAGES:
        if _is_finite(timings_ms.get(stage)):
            STAGE_DURATION.labels(stage=stage).observe(timings_ms[stage] / 1000.0)

    decode_ms = timings_ms.get("decode")
    if _is_finite(decode_ms) and decode_ms > 0 and fields.get("output_tokens") is not None:
        TOKENS_PER_SECOND.observe(fields["output_tokens"] / (decode_ms / 1000.0))

    # A job with steps = 0 has no delta, and its norm of 0 would only crowd the lowest bucket.
    if fields.get("steps_run") and _is_finite(fields.get("delta_norm")):
        DELTA_NORM.observe(fields["delta_norm"])


def record_batch(job_count: int) -> None:
    """Record the size of a SLOT batch that this process ran, and its GPU memory after it."""
    BATCH_JOBS.observe(job_count)
    _record_gpu_memory()


def _record_gpu_memory() -> None:
    global _gpu_gauges

    # Only a process that already uses CUDA is read: calling into CUDA here would initialise it,
    # and the parent of a prefork pool must never do that (CUDA does not survive a fork).
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return

    if _gpu_gauges is None:
        _gpu_gauges = (
            Gauge(
                "slotq_gpu_memory_allocated_bytes",
                "GPU memory held by tensors, summed over the worker's live pool processes.",
                multiprocess_mode="livesum",
                registry=REGISTRY,
            ),
            Gauge(
                "slotq_gpu_memory_max_allocated_bytes",
                "Peak GPU memory held by tensors in one pool process since it started, max over live processes.",
                multiprocess_mode="livemax",
                registry=REGISTRY,
            ),
        )
    allocated, max_allocated = _gpu_gauges
    allocated.set(torch.cuda.memory_allocated())
    max_allocated.set(torch.cuda.max_memory_allocated())


def start_metrics_server(port: int, multiprocess_dir: str | Path) -> Any | None:
    """Serve the sum of every process's metrics in ``multiprocess_dir`` on ``port``; return the server.

    Returns None, after logging an error, when the port cannot be bound: the worker then runs
    its jobs without serving metrics.
    """
    registry = CollectorRegistry()
    # Registered first, so that the files of dead processes are gone before the sum is read.
    registry.register(_DeadProcessPruner(multiprocess_dir))
    MultiProcessCollector(registry, path=str(multiprocess_dir))
    return serve_metrics(registry, port, "worker", "SLOTQ_WORKER_METRICS_PORT")


class _DeadProcessPruner:
    """Collector that exports nothing and deletes live-gauge files of pool processes that died."""

    def __init__(self, multiprocess_dir: str | Path):
        self.multiprocess_dir = multiprocess_dir

    def collect(self) -> Iterator[Metric]:
        remove_dead_process_gauges(self.multiprocess_dir)
        return iter(())


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
