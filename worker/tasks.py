"""The Celery task that runs jobs: claim one, and more queued ones to batch with it, run SLOT and
decoding, store each outcome.

The job store decides which delivery may run a job: `claim_job` moves it from queued to running
with a conditional update, so a duplicate delivery of a running, finished or cancelled job finds
nothing to claim and returns. Each claim holds a lease that `worker.lease.LeaseKeeper` renews
while the model works; outcomes are written under the claim's attempt number, so a worker whose
job the sweeper queued again cannot overwrite the next attempt. No database session is open
while the model works.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from sqlalchemy.exc import DBAPIError

from slotq.logging import redact_text, with_ids
from slotq.requests import JobRequest, RequestValidationError, parse_job_request
from slotq.settings import Settings, load_settings
from slotq.store import repository
from slotq.store.leases import Claim
from worker import metrics, runtime
from worker.celery_app import RUN_JOB_TASK, app
from worker import execution
from worker.execution import JobOutcome, WorkItem, execute_many, result_fields
from worker.lease import LeaseKeeper

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
        logger.exception(
            "loading the model or the validation prompts at worker start failed; each job tries "
            "again and fails with this error while it lasts"
        )


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """Run job ``job_id``, and other queued jobs with it as one batch; store every outcome."""
    if not isinstance(job_id, str) or not job_id:
        logger.error("rejected task %s: job id %r is not a non-empty string", RUN_JOB_TASK, job_id)
        return

    settings = load_settings()
    log = with_ids(logger, job_id=job_id)
    log.info("received")

    try:
        record = repository.claim_job(job_id, runtime.worker_name(), settings.lease_s)
    except DBAPIError as error:
        log.error("not claimed: database error: %s; the sweeper sends the job again", _first_line(error))
        return
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
    it claimed and does nothing. If this process dies, the companions' leases pass and the
    sweeper queues them again, like the job of this task.
    """
    wanted = settings.worker_batch_size - 1
    if wanted <= 0:
        return []

    worker = runtime.worker_name()
    company = repository.claim_queued_jobs(worker, wanted, model_name=record.model_name, lease_s=settings.lease_s)
    if len(company) < wanted and settings.worker_batch_wait_ms > 0:
        time.sleep(settings.worker_batch_wait_ms / 1000)
        company += repository.claim_queued_jobs(
            worker, wanted - len(company), model_name=record.model_name, lease_s=settings.lease_s
        )
    if company:
        with_ids(logger, job_id=record.id).info(
            "running with %d more queued jobs as one batch: %s", len(company), ", ".join(r.id for r in company)
        )
    return company


def _accept(record: Any, settings: Settings) -> tuple[Any, JobRequest, Any] | None:
    """Re-check a claimed job's stored request; fail the job when it is invalid."""
    log = with_ids(logger, job_id=record.id, batch_id=record.batch_id)
    log.info("started attempt %d", record.attempts)
    metrics.record_claim(record)
    try:
        request = parse_job_request(record.request, settings)
    except RequestValidationError as error:
        log.warning("failed: stored request is invalid: %s", error)
        metrics.record_outcome(JobOutcome(fields=None, error=str(error)))
        repository.fail_job(record.id, str(error), attempt=record.attempts)
        return None
    return record, request, log


def _run_claimed_jobs(claimed: list[tuple[Any, JobRequest, Any]], settings: Settings) -> None:
    """Run the claimed jobs and store one outcome each; an error of the batch fails every job."""
    claims = [Claim(record.id, record.attempts) for record, _, _ in claimed]
    with LeaseKeeper(claims, runtime.worker_name(), settings.lease_s):
        outcomes = _execute(claimed, settings)
    metrics.record_batch(len(claimed))
    for (record, _, log), outcome in zip(claimed, outcomes):
        try:
            _store(record, outcome, settings, log)
        except DBAPIError as error:
            log.error(
                "outcome not stored: database error: %s; the job runs again once its lease passes",
                _first_line(error),
            )


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


def _store(record: Any, outcome: JobOutcome, settings: Settings, log) -> None:
    metrics.record_outcome(outcome)
    if outcome.error is not None:
        log.warning("failed: %s", outcome.error)
        if not repository.fail_job(record.id, outcome.error, guard=outcome.guard, attempt=record.attempts):
            log.warning("failure not stored: the job left the running state or was queued again while it ran")
        return

    fields = outcome.fields
    if not repository.complete_job(record.id, fields, guard=outcome.guard, attempt=record.attempts):
        log.warning("result not stored: the job left the running state or was queued again while it ran")
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


def _first_line(error: DBAPIError) -> str:
    return str(error.orig or error).splitlines()[0]


def _prompt_text(request: JobRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n".join(message.content for message in request.messages)
