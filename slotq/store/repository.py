"""Repository of jobs: every read and status change of the job store.

Each call opens and closes its own short session, so no session or transaction outlives a call
and none is held while a worker runs the model. Status changes are conditional updates
(``UPDATE jobs ... WHERE id = :id AND status = :expected``): when two workers or two deliveries of
one task race, exactly one update matches and the others change nothing.

Reads and cancels take an optional ``tenant_id``: given, a job of another tenant is treated as
missing; None (workers, operators) reaches every job.

The module-level functions use a process-wide repository on ``load_settings().database_url``;
call `configure` first to point them elsewhere. `JobRepository` serves code that has its own
engine, such as the API app and the tests.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from slotq.logging import with_ids
from slotq.requests import JobRequest
from slotq.settings import load_settings
from slotq.store.batches import BatchCancelOutcome, BatchLine, BatchRecord, BatchSpec, BatchStoreMixin
from slotq.store.cursor import decode_cursor, encode_cursor
from slotq.store.delta import encode_delta
from slotq.store.engine import make_engine, make_session_factory
from slotq.store.idempotency import IdempotencyClaim, IdempotencyStoreMixin, check_queue_depth
from slotq.store.leases import LeaseStoreMixin
from slotq.store.models import STATUSES, Job, JobStatus, utcnow
from slotq.store.purge import PurgeStoreMixin
from slotq.store.records import CancelOutcome, CancelResult, JobRecord
from slotq.store.tenants import TenantStoreMixin

logger = logging.getLogger(__name__)

#: Maximum length of the error text stored on a failed job, in characters; longer text is cut.
MAX_ERROR_CHARS = 10_000

#: Lease of a claim when the caller gives none, in seconds (the default of ``SLOTQ_LEASE_S``).
DEFAULT_LEASE_S = 60.0

#: Keys that `complete_job` accepts in its result mapping.
RESULT_KEYS = (
    "output_text",
    "text",
    "finish_reason",
    "prompt_tokens",
    "output_tokens",
    "delta_norm",
    "delta",
    "loss_trace",
    "timings_ms",
    "head_path",
    "steps_run",
    "diverged_at",
    "seed",
    "model_name",
    "divergence",
    # Output format check of a batch job: the fields of `slotq.formats.FormatCheck.result_fields`.
    "format_ok",
    "parsed_output",
    "format_source",
    "format_error",
)

#: Keys that `complete_job` and `fail_job` accept in ``guard``: the keys of
#: ``slotq.guardrails.GuardOutcome.to_dict()`` plus ``tolerance``, the relative rise of the
#: validation loss that the check allowed. ``rejected`` and ``reason`` are not stored: a
#: rejected job is failed, and its error contains the reason.
GUARD_KEYS = (
    "validation_loss",
    "validation_loss_base",
    "validation_loss_change",
    "validation_loss_used",
    "overfit",
    "policy",
    "delta_step",
    "rejected",
    "reason",
    "tolerance",
)


class JobRepository(BatchStoreMixin, TenantStoreMixin, IdempotencyStoreMixin, PurgeStoreMixin, LeaseStoreMixin):
    """Job store operations on one engine.

    Args:
        engine: the store's engine, from `slotq.store.engine.make_engine`.
        clock: source of aware UTC timestamps; tests pass a fake one.
    """

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow):
        self.engine = engine
        self._sessions = make_session_factory(engine)
        self._clock = clock

    def now(self) -> datetime:
        """Return the current time of the repository's clock (aware UTC)."""
        return self._clock()

    def ping(self) -> None:
        """Run ``SELECT 1``; raises the driver's error when the database is unreachable."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def create_job(
        self,
        request: JobRequest,
        model_name: str,
        tenant_id: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        max_queued_jobs: int | None = None,
    ) -> JobRecord:
        """Store a new queued job for a validated request and return it.

        Args:
            tenant_id: owner of the job.
            idempotency: stores the submit's response under its key in the same transaction.
            max_queued_jobs: most queued jobs across all tenants, this one included; None
                checks nothing.

        Raises:
            IdempotencyKeyExistsError: another submit stored a response under the same key
                first; nothing was stored.
            QueueFullError: the job would pass ``max_queued_jobs``; nothing was stored.
        """
        now = self._clock()
        job = Job(
            id=str(uuid.uuid4()),
            status=JobStatus.QUEUED.value,
            request=request.to_dict(),
            prompt=request.prompt,
            messages=request.to_dict().get("messages"),
            slot_steps=request.slot.steps,
            slot_lr=request.slot.lr,
            generation=request.to_dict()["generation"],
            job_metadata=request.metadata,
            model_name=model_name,
            overfit_policy=request.slot.overfit_policy,
            created_at=now,
            queued_at=now,
            attempts=0,
            tenant_id=tenant_id,
        )
        try:
            with self._sessions.begin() as session:
                session.add(job)
                session.flush()
                check_queue_depth(session, 1, max_queued_jobs)
                if idempotency is not None:
                    self._store_response(session, idempotency, "job", job.id, JobRecord.from_row(job))
        except IntegrityError as error:
            self._raise_if_claimed(error, idempotency)

        with_ids(logger, job_id=job.id, tenant_id=tenant_id).info("job stored as queued")
        return JobRecord.from_row(job)

    def claim_job(self, job_id: str, worker: str, lease_s: float = DEFAULT_LEASE_S) -> JobRecord | None:
        """Move a queued job to running for ``worker`` and count the attempt.

        The claim holds a lease of ``lease_s`` seconds, which the worker renews while it runs
        the job (`renew_leases`). Records ``timings_ms.queue_wait``: milliseconds from
        queued_at to this claim.
        Returns None, changing nothing, when the job is missing or not queued (a duplicate
        delivery, a cancelled job, or a job another worker claimed first).
        """
        log = with_ids(logger, job_id=job_id)
        with self._sessions.begin() as session:
            queued_at = session.scalar(
                select(Job.queued_at).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
            )
            if queued_at is None:
                log.info("claim skipped: job is missing or not queued")
                return None

            now = self._clock()
            queue_wait_ms = max((now - queued_at).total_seconds() * 1000.0, 0.0)
            claimed = self._change_status(
                session,
                job_id,
                expected=(JobStatus.QUEUED.value,),
                status=JobStatus.RUNNING.value,
                started_at=now,
                worker=worker,
                attempts=Job.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_s),
                timings_ms={"queue_wait": round(queue_wait_ms, 3)},
            )
            if not claimed:
                log.info("claim skipped: another worker claimed the job first")
                return None
            record = JobRecord.from_row(session.get(Job, job_id, populate_existing=True))

        log.info("job claimed by worker %s, attempt %d", worker, record.attempts)
        return record

    def claim_queued_jobs(
        self, worker: str, limit: int, model_name: str | None = None, lease_s: float = DEFAULT_LEASE_S
    ) -> list[JobRecord]:
        """Claim up to ``limit`` of the oldest queued jobs, for a worker that runs them as a batch.

        Each claim is the same conditional update as `claim_job`, so a job that another worker
        claims in between is skipped. Those jobs' own queue messages later find nothing to claim.
        ``model_name`` restricts the claim to jobs recorded for that model.
        """
        if limit <= 0:
            return []
        query = select(Job.id).where(Job.status == JobStatus.QUEUED.value)
        if model_name is not None:
            query = query.where(Job.model_name == model_name)
        # Jobs of one batch share queued_at, so line_number keeps them in input order, which
        # lets a results download move on sooner. Twice the limit leaves room for candidates
        # that other workers claim first.
        query = query.order_by(Job.queued_at, Job.line_number, Job.id).limit(2 * limit)
        with self._sessions.begin() as session:
            candidates = list(session.scalars(query))

        claimed = []
        for job_id in candidates:
            record = self.claim_job(job_id, worker, lease_s)
            if record is not None:
                claimed.append(record)
            if len(claimed) == limit:
                break
        return claimed

    def complete_job(
        self,
        job_id: str,
        result: Mapping[str, Any],
        guard: Mapping[str, Any] | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Store the result of a running job and mark it succeeded.

        Args:
            result: any of `RESULT_KEYS`. ``text`` is accepted for ``output_text`` (the key of
                ``GenerationResult.to_dict``). ``delta`` is a float sequence, a tensor or
                float32 little-endian bytes. ``timings_ms`` is merged into the stored timings,
                which keep ``queue_wait``. When ``diverged_at`` is set and ``divergence`` is
                not, a note naming the step and the kept delta is stored.
            guard: the over-fitting check, any of `GUARD_KEYS`; None leaves those columns as
                they are. Non-finite losses are stored as null.
            attempt: the attempt number of the caller's claim; given, the result is stored only
                while the job runs that attempt, so a worker whose job was queued again after
                its lease passed cannot write over the next attempt.

        Returns:
            True when this call stored the result; False when the job was not running (or ran
            another attempt), in which case nothing is written (a second completion never
            overwrites the first).

        Raises:
            ValueError: ``result`` has a key outside `RESULT_KEYS`, or ``guard`` one outside
                `GUARD_KEYS`.
        """
        unknown = sorted(set(result) - set(RESULT_KEYS))
        if unknown:
            raise ValueError(f"unknown result keys {unknown}; allowed keys: {', '.join(RESULT_KEYS)}")
        values = {**_result_columns(result), **_guard_columns(guard)}

        log = with_ids(logger, job_id=job_id)
        with self._sessions.begin() as session:
            stored_timings = session.scalar(select(Job.timings_ms).where(Job.id == job_id)) or {}
            timings = {**stored_timings, **dict(result.get("timings_ms") or {})}
            completed = self._change_status(
                session,
                job_id,
                expected=(JobStatus.RUNNING.value,),
                attempt=attempt,
                status=JobStatus.SUCCEEDED.value,
                finished_at=self._clock(),
                lease_expires_at=None,
                timings_ms=timings,
                **values,
            )

        if completed:
            log.info("job succeeded")
        else:
            log.warning("result not stored: job is missing or not running")
        return completed

    def fail_job(
        self, job_id: str, error: str, guard: Mapping[str, Any] | None = None, attempt: int | None = None
    ) -> bool:
        """Mark a queued or running job failed with ``error``; False when it was neither.

        Args:
            guard: the over-fitting check of a job that the reject policy failed, any of
                `GUARD_KEYS`, stored like `complete_job` stores it.
            attempt: as for `complete_job`: given, only a job running that attempt is failed.

        Raises:
            ValueError: ``guard`` has a key outside `GUARD_KEYS`.
        """
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 1] + "…"
        guard_values = _guard_columns(guard)

        log = with_ids(logger, job_id=job_id)
        with self._sessions.begin() as session:
            failed = self._change_status(
                session,
                job_id,
                expected=(JobStatus.QUEUED.value, JobStatus.RUNNING.value),
                attempt=attempt,
                status=JobStatus.FAILED.value,
                finished_at=self._clock(),
                lease_expires_at=None,
                error=error,
                **guard_values,
            )

        if failed:
            log.info("job failed")
        else:
            log.warning("failure not stored: job is missing or already finished")
        return failed

    def cancel_job(self, job_id: str, tenant_id: str | None = None) -> CancelOutcome:
        """Cancel a queued job; a running or finished job is left as it is.

        Sets cancelled_at and finished_at to the same time. A job of another tenant than
        ``tenant_id`` (when given) is left as it is and reported as not found.
        """
        log = with_ids(logger, job_id=job_id)
        with self._sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is None or not _owned_by(job.tenant_id, tenant_id):
                return CancelOutcome(CancelResult.NOT_FOUND, None)

            now = self._clock()
            cancelled = self._change_status(
                session,
                job_id,
                expected=(JobStatus.QUEUED.value,),
                status=JobStatus.CANCELLED.value,
                cancelled_at=now,
                finished_at=now,
            )
            job = session.get(Job, job_id, populate_existing=True)
            record = JobRecord.from_row(job)

        if cancelled:
            log.info("job cancelled")
            return CancelOutcome(CancelResult.CANCELLED, record)
        if record.status == JobStatus.RUNNING.value:
            log.info("cancel rejected: job is running")
            return CancelOutcome(CancelResult.RUNNING, record)
        return CancelOutcome(CancelResult.FINISHED, record)

    def get_job(self, job_id: str, tenant_id: str | None = None) -> JobRecord | None:
        """Return the job with ``job_id``, or None (also for a job of another tenant than ``tenant_id``)."""
        with self._sessions() as session:
            job = session.get(Job, job_id)
            if job is None or not _owned_by(job.tenant_id, tenant_id):
                return None
            return JobRecord.from_row(job)

    def list_jobs(
        self,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        overfit: bool | None = None,
        tenant_id: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """Return one page of jobs, newest first, and the cursor of the next page (or None).

        With ``tenant_id`` only that tenant's jobs are listed.

        The order is (created_at, id) descending, so pages neither skip nor repeat jobs while
        new jobs arrive. ``overfit`` True or False keeps only jobs whose over-fitting check
        found that; jobs not checked (overfit null) match neither.

        Raises:
            ValueError: ``status`` is not a job status or ``limit`` is below 1.
            InvalidCursorError: ``cursor`` did not come from this function.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"invalid status {status!r}; allowed: {', '.join(STATUSES)}")
        if limit < 1:
            raise ValueError(f"invalid limit {limit}; must be at least 1")

        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        if tenant_id is not None:
            query = query.where(Job.tenant_id == tenant_id)
        if status is not None:
            query = query.where(Job.status == status)
        if overfit is not None:
            # "= true", not "IS true", so Postgres can use ix_jobs_overfit_created_at_id.
            query = query.where(Job.overfit == bool(overfit))
        if cursor is not None:
            created_at, job_id = decode_cursor(cursor)
            query = query.where(
                or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
            )

        with self._sessions() as session:
            jobs = [JobRecord.from_row(job) for job in session.scalars(query)]

        if len(jobs) <= limit:
            return jobs, None
        last = jobs[limit - 1]
        return jobs[:limit], encode_cursor(last.created_at, last.id)

    @staticmethod
    def _change_status(
        session, job_id: str, expected: tuple[str, ...], attempt: int | None = None, **values: Any
    ) -> bool:
        """Apply ``values`` only if the job's status is in ``expected`` (and its attempt number is
        ``attempt``, when given); True when it matched."""
        conditions = [Job.id == job_id, Job.status.in_(expected)]
        if attempt is not None:
            conditions.append(Job.attempts == attempt)
        statement = (
            update(Job)
            .where(*conditions)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return session.execute(statement).rowcount == 1


def _owned_by(owner: str | None, tenant_id: str | None) -> bool:
    """True when ``tenant_id`` is None (no scoping) or owns the row."""
    return tenant_id is None or owner == tenant_id


def _result_columns(result: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "text" in result or "output_text" in result:
        values["output_text"] = result.get("output_text", result.get("text"))
    for key in RESULT_KEYS:
        if key in result and key not in ("text", "output_text", "loss_trace", "delta", "delta_norm", "timings_ms"):
            values[key] = result[key]
    if "loss_trace" in result:
        # JSON has no NaN or infinity, so a non-finite loss is stored as null.
        values["loss_trace"] = [_finite_or_none(loss) for loss in result["loss_trace"]]
    if "delta_norm" in result:
        values["delta_norm"] = _finite_or_none(result["delta_norm"])
    if result.get("delta") is not None:
        values["delta"], values["delta_dim"] = encode_delta(result["delta"])
    if result.get("diverged_at") is not None and not result.get("divergence"):
        values["divergence"] = _divergence_note(result["diverged_at"], result.get("steps_run"))
    return values


def _divergence_note(diverged_at: int, steps_run: int | None) -> str:
    note = f"optimisation stopped at step {diverged_at} because the loss or delta was not finite"
    if steps_run is None:
        return note
    return f"{note}; the fit kept the last finite delta, from step {steps_run} (step 0 is delta = 0)"


def _guard_columns(guard: Mapping[str, Any] | None) -> dict[str, Any]:
    if guard is None:
        return {}
    unknown = sorted(set(guard) - set(GUARD_KEYS))
    if unknown:
        raise ValueError(f"unknown guard keys {unknown}; allowed keys: {', '.join(GUARD_KEYS)}")

    values: dict[str, Any] = {}
    for key in ("validation_loss", "validation_loss_base", "validation_loss_change", "validation_loss_used"):
        if key in guard:
            values[key] = _finite_or_none(guard[key])
    if "tolerance" in guard:
        values["overfit_tolerance"] = _finite_or_none(guard["tolerance"])
    if "overfit" in guard:
        values["overfit"] = None if guard["overfit"] is None else bool(guard["overfit"])
    if "policy" in guard:
        values["overfit_policy"] = guard["policy"]
    if "delta_step" in guard:
        values["delta_step"] = guard["delta_step"]
    return values


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_default_repository: JobRepository | None = None
_default_lock = threading.Lock()


def configure(target: str | Engine | JobRepository) -> JobRepository:
    """Point the module-level functions at a database URL, an engine or a repository."""
    global _default_repository
    if isinstance(target, str):
        target = make_engine(target)
    if isinstance(target, Engine):
        target = JobRepository(target)
    with _default_lock:
        _default_repository = target
    return target


def default_repository() -> JobRepository:
    """Return the process-wide repository, created from settings on first use."""
    global _default_repository
    with _default_lock:
        if _default_repository is None:
            _default_repository = JobRepository(make_engine(load_settings().database_url))
        return _default_repository


def create_job(request: JobRequest, model_name: str) -> JobRecord:
    """`JobRepository.create_job` on the default repository."""
    return default_repository().create_job(request, model_name)


def claim_job(job_id: str, worker: str, lease_s: float = DEFAULT_LEASE_S) -> JobRecord | None:
    """`JobRepository.claim_job` on the default repository."""
    return default_repository().claim_job(job_id, worker, lease_s)


def claim_queued_jobs(
    worker: str, limit: int, model_name: str | None = None, lease_s: float = DEFAULT_LEASE_S
) -> list[JobRecord]:
    """`JobRepository.claim_queued_jobs` on the default repository."""
    return default_repository().claim_queued_jobs(worker, limit, model_name, lease_s)


def complete_job(
    job_id: str, result: Mapping[str, Any], guard: Mapping[str, Any] | None = None, attempt: int | None = None
) -> bool:
    """`JobRepository.complete_job` on the default repository."""
    return default_repository().complete_job(job_id, result, guard, attempt)


def fail_job(
    job_id: str, error: str, guard: Mapping[str, Any] | None = None, attempt: int | None = None
) -> bool:
    """`JobRepository.fail_job` on the default repository."""
    return default_repository().fail_job(job_id, error, guard, attempt)


def cancel_job(job_id: str, tenant_id: str | None = None) -> CancelOutcome:
    """`JobRepository.cancel_job` on the default repository."""
    return default_repository().cancel_job(job_id, tenant_id=tenant_id)


def get_job(job_id: str, tenant_id: str | None = None) -> JobRecord | None:
    """`JobRepository.get_job` on the default repository."""
    return default_repository().get_job(job_id, tenant_id=tenant_id)


def list_jobs(
    status: str | None = None, cursor: str | None = None, limit: int = 50, overfit: bool | None = None
) -> tuple[list[JobRecord], str | None]:
    """`JobRepository.list_jobs` on the default repository."""
    return default_repository().list_jobs(status=status, cursor=cursor, limit=limit, overfit=overfit)


def get_batch(batch_id: str, counts: bool = True, tenant_id: str | None = None) -> BatchRecord | None:
    """`JobRepository.get_batch` on the default repository."""
    return default_repository().get_batch(batch_id, counts=counts, tenant_id=tenant_id)


def cancel_batch(batch_id: str, tenant_id: str | None = None) -> BatchCancelOutcome:
    """`JobRepository.cancel_batch` on the default repository."""
    return default_repository().cancel_batch(batch_id, tenant_id=tenant_id)
