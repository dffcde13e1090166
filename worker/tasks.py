"""The Celery task that runs jobs: claim one, and more queued ones to batch with it, run SLOT and
decoding, store each outcome.

The job store decides which delivery may run a job: `claim_job` moves it from queued to running
with a conditional update, so a duplicate delivery of a running, finished or cancelled job finds
nothing to claim and returns. No database session is open while the model works.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from slotq.logging import redact_text, with_ids
from slotq.requests import JobRequest, RequestValidationError, parse_job_request
from slotq.settings import Settings, load_settings
from slotq.store import repository
from worker import runtime
from worker.celery_app import RUN_JOB_TASK, app
from worker import execution
from worker.execution import JobOutcome, WorkItem, execute_many, result_fields

__all__ = ["run_job", "result_fields", "load_model_after_fork"]

logger = logging.getLogger(__name__)


@worker_process_init.connect
def load_model_after_fork(**_: Any) -> None:
    """Load the model and the default validation set in each pool process as it starts.

    The first job then does not wait for either.

    A load error is logged and not raised. The pool process stays up, and each job it receives
    retries the load and fails with the load error, so the client sees what is wrong.
    """
    settings = load_settings()
    try:
        loaded = runtime.get_model(settings)
        execution.validation_cache.get(loaded, settings, batch_id=None, batch_prompts=None)
    except Exception:
        logger.exception("loading the model or the validation prompts at worker start failed; jobs will retry")


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """Run job ``job_id``, and other queued jobs with it as one batch; store every outcome."""
    if not isinstance(job_id, str) or not job_id:
        logger.error("rejected task %s: job id %r is not a non-empty string", RUN_JOB_TASK, job_id)
        return

    settings = load_settings()
    log = with_ids(logger, job_id=job_id)
    log.info("received")

    record = repository.claim_job(job_id, runtime.worker_name())
    if record is None:
        log.info("not claimed: the job is not queued (duplicate delivery, cancelled or unknown)")
        return

    records = [record] + _claim_company(record, settings)
    claimed = [item for item in (_accept(record, settings) for record in records) if item is not None]
    if claimed:
        _run_claimed_jobs(claimed, settings)


def _claim_company(record: Any, settings: Settings) -> list[Any]:
    """Claim more queued jobs of this worker's model to run in the same SLOT batch.

    Waits at most ``settings.worker_batch_wait_ms`` for jobs submitted just after this one, so a
    lone job is held back no longer than that. Each companion job's own queue message later finds
    it claimed and does nothing.
    """
    # NOTE: if this process dies mid-batch, only this task's message is redelivered. The
    # companions stay "running" because no lease sweeper exists yet to re-queue them.
    wanted = settings.worker_batch_size - 1
    if wanted <= 0:
        return []

    worker = runtime.worker_name()
    company = repository.claim_queued_jobs(worker, wanted, model_name=record.model_name)
    if len(company) < wanted and settings.worker_batch_wait_ms > 0:
        time.sleep(settings.worker_batch_wait_ms / 1000)
        company += repository.claim_queued_jobs(worker, wanted - len(company), model_name=record.model_name)
    if company:
        with_ids(logger, job_id=record.id).info(
            "running with %d more queued jobs as one batch: %s", len(company), ", ".join(r.id for r in company)
        )
    return company


def _accept(record: Any, settings: Settings) -> tuple[Any, JobRequest, Any] | None:
    """Re-check a claimed job's stored request; fail the job when it is invalid."""
    log = with_ids(logger, job_id=record.id, batch_id=record.batch_id)
    log.info("started attempt %d", record.attempts)
    try:
        request = parse_job_request(record.request, settings)
    except RequestValidationError as error:
        log.warning("failed: stored request is invalid: %s", error)
        repository.fail_job(record.id, str(error))
        return None
    return record, request, log


def _run_claimed_jobs(claimed: list[tuple[Any, JobRequest, Any]], settings: Settings) -> None:
    """Run the claimed jobs and store one outcome each; an error of the batch fails every job."""
    outcomes = _execute(claimed, settings)
    for (record, _, log), outcome in zip(claimed, outcomes):
        _store(record.id, outcome, settings, log)


def _execute(claimed: list[tuple[Any, JobRequest, Any]], settings: Settings) -> list[JobOutcome]:
    from slot_core import SlotError

    first_log = claimed[0][2]
    try:
        loaded = runtime.get_model(settings)
        batches: dict[str, Any] = {}
        items = []
        for record, request, log in claimed:
            if record.batch_id is not None and record.batch_id not in batches:
                batches[record.batch_id] = repository.get_batch(record.batch_id, counts=False)
            log.info(
                "generating with steps=%d lr=%g max_new_tokens=%d on %s in a batch of %d, prompt %s",
                request.slot.steps, request.slot.lr, request.generation.max_new_tokens, loaded.device,
                len(claimed), redact_text(_prompt_text(request), settings.log_prompts),
            )
            items.append(WorkItem(request, batches.get(record.batch_id)))
        return execute_many(items, loaded, settings)
    except SoftTimeLimitExceeded:
        error = f"timed out: the job ran past its soft time limit of {app.conf.task_soft_time_limit} s"
    except SlotError as slot_error:
        error = f"{type(slot_error).__name__}: {slot_error}"
    except Exception as unexpected:
        first_log.exception("failed with an unexpected error in a batch of %d jobs", len(claimed))
        error = f"internal error: {type(unexpected).__name__}: {unexpected}"
    return [JobOutcome(fields=None, error=error)] * len(claimed)


def _store(job_id: str, outcome: JobOutcome, settings: Settings, log) -> None:
    if outcome.error is not None:
        log.warning("failed: %s", outcome.error)
        if not repository.fail_job(job_id, outcome.error, guard=outcome.guard):
            log.warning("failure not stored: the job left the running state while it ran")
        return

    fields = outcome.fields
    if not repository.complete_job(job_id, fields, guard=outcome.guard):
        log.warning("result not stored: the job left the running state while it ran")
        return

    overfit = outcome.guard["overfit"] if outcome.guard else None
    if overfit:
        guard = outcome.guard
        log.warning(
            "overfit: validation loss %.4f against %.4f without delta (%+.1f%%, tolerance %.1f%%), "
            "policy %s, decoded step %d",
            guard["validation_loss"], guard["validation_loss_base"], 100 * guard["validation_loss_change"],
            100 * guard["tolerance"], guard["policy"], guard["delta_step"],
        )
    log.info(
        "finished: %d output tokens, delta norm %.4g, overfit %s, total %.0f ms, output %s",
        fields["output_tokens"],
        fields["delta_norm"],
        overfit,
        fields["timings_ms"]["total"],
        redact_text(fields["text"], settings.log_prompts),
    )


def _prompt_text(request: JobRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(message.content for message in request.messages)
