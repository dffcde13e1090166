"""Batch operations of the job store: create a batch with its jobs, read its progress and results.

`BatchStoreMixin` adds these methods to `slotq.store.repository.JobRepository`, so the API and the
workers reach batches and jobs through one repository. Like every repository call, each method
opens and closes its own short session; the results iterator opens one per page.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from slotq.logging import with_ids
from slotq.requests import JobRequest
from slotq.store.idempotency import IdempotencyClaim, check_queue_depth
from slotq.store.models import (
    FINISHED_STATUSES,
    STATUSES,
    Batch,
    BatchStatus,
    Job,
    JobStatus,
)

logger = logging.getLogger(__name__)

#: Rows sent to the database per INSERT statement when a batch is created.
INSERT_CHUNK_ROWS = 1000
#: Jobs read per query while results are streamed.
RESULTS_PAGE_ROWS = 500

#: Columns that a results line needs; the large ones (request, prompt, δ) stay unread.
_RESULT_COLUMNS = (
    Job.id,
    Job.status,
    Job.custom_id,
    Job.line_number,
    Job.output_text,
    Job.finish_reason,
    Job.prompt_tokens,
    Job.output_tokens,
    Job.delta_norm,
    Job.timings_ms,
    Job.started_at,
    Job.finished_at,
    Job.error,
    Job.format_ok,
    Job.parsed_output,
    Job.format_source,
    Job.format_error,
    Job.overfit,
)
_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass(frozen=True)
class BatchSpec:
    """Batch-level settings of an upload, already validated.

    Attributes:
        defaults: request fields merged under each line's request, as submitted.
        response_format: ``ResponseFormat.to_dict()``, or None for no output check.
        validation_prompts: chat message lists for the over-fitting check, or None for the
            workers' default set.
        metadata: client data kept with the batch.
        input_file_name: name of the uploaded file, for people only.
    """

    defaults: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    validation_prompts: list[list[dict[str, str]]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    input_file_name: str | None = None


@dataclass(frozen=True)
class BatchLine:
    """One valid line of an upload: its 1-based line number, custom_id and merged request."""

    line_number: int
    custom_id: str
    request: JobRequest


@dataclass(frozen=True)
class BatchCounts:
    """Aggregates over a batch's jobs.

    Attributes:
        by_status: number of jobs per job status, every status present.
        format_checked: succeeded jobs whose output was checked against the response format.
        format_ok: checked jobs whose output complied.
        overfit: jobs whose δ was flagged as over-fitted.
        ran: jobs that a worker ran to the end (succeeded or failed after starting).
        first_started_at: earliest start of any job, or None.
        last_finished_at: latest finish of any job, or None.
    """

    by_status: dict[str, int]
    format_checked: int
    format_ok: int
    overfit: int
    ran: int
    first_started_at: datetime | None
    last_finished_at: datetime | None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def finished(self) -> int:
        return sum(self.by_status[status] for status in FINISHED_STATUSES)

    @property
    def unfinished(self) -> int:
        return self.total - self.finished


@dataclass(frozen=True)
class BatchRecord:
    """A batch as stored when it was read; ``counts`` is None when the read skipped them."""

    id: str
    status: str
    model_name: str
    input_file_name: str | None
    line_count: int
    skipped_count: int
    defaults: dict[str, Any]
    response_format: dict[str, Any] | None
    validation_prompts: list[list[dict[str, str]]] | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    tenant_id: str | None
    purged_at: datetime | None
    counts: BatchCounts | None = None

    @classmethod
    def from_row(cls, batch: Batch, counts: BatchCounts | None = None) -> BatchRecord:
        values = {
            name: getattr(batch, name)
            for name in cls.__dataclass_fields__
            if name not in ("metadata", "counts")
        }
        return cls(metadata=batch.batch_metadata, counts=counts, **values)


@dataclass(frozen=True)
class BatchResult:
    """One finished job of a batch, with the fields of a results line."""

    job_id: str
    line_number: int
    custom_id: str
    status: str
    output_text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    delta_norm: float | None
    timings_ms: dict[str, float] | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    format_ok: bool | None
    parsed_output: Any
    format_source: str | None
    format_error: str | None
    overfit: bool | None


@dataclass(frozen=True)
class ResultsRange:
    """The lines that a results download starting after ``after_line`` contains.

    Every job with ``after_line < line_number < end_line`` was finished when the range was
    computed, so a download of exactly these lines never skips an unfinished one.

    Attributes:
        end_line: the first unfinished line after ``after_line`` (exclusive end), or None when
            every later line is finished.
        last_line: line number of the last line in the range, or None when it is empty.
        count: lines in the range.
        complete: no unfinished line follows, so the range reaches the end of the batch.
    """

    after_line: int
    end_line: int | None
    last_line: int | None
    count: int

    @property
    def complete(self) -> bool:
        return self.end_line is None


@dataclass(frozen=True)
class BatchCancelOutcome:
    """Result of `cancel_batch`.

    Attributes:
        found: a batch with that id exists.
        cancelled_jobs: queued jobs this call cancelled.
        already_finished: the batch had completed or been cancelled before this call, so nothing
            changed.
        batch: the batch as stored afterwards, with counts; None when not found.
    """

    found: bool
    cancelled_jobs: int
    already_finished: bool
    batch: BatchRecord | None


class BatchStoreMixin:
    """Batch methods of `JobRepository`; they use its ``_sessions`` and ``_clock``."""

    def create_batch(
        self,
        spec: BatchSpec,
        lines: Iterable[BatchLine],
        model_name: str,
        skipped_count: Callable[[], int] = lambda: 0,
        tenant_id: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        max_queued_jobs: int | None = None,
    ) -> tuple[BatchRecord, list[str]]:
        """Store a batch and one queued job per line, in a single transaction.

        ``lines`` is consumed inside the transaction and rows are inserted in chunks of
        `INSERT_CHUNK_ROWS`, so an upload is never held in memory as a whole. An exception
        raised by ``lines`` (such as a validation error found at the end of the upload) rolls
        everything back, and the batch never existed.

        Args:
            skipped_count: called once ``lines`` is exhausted; the number of invalid lines the
                client asked to skip.
            tenant_id: owner of the batch and its jobs.
            idempotency: stores the submit's response under its key in the same transaction.
            max_queued_jobs: most queued jobs across all tenants, this batch's included; a
                batch that would pass it is rejected whole. None checks nothing.

        Returns:
            The batch and its job ids in line order.

        Raises:
            ValueError: ``lines`` yielded no line.
            IdempotencyKeyExistsError: another submit stored a response under the same key
                first; nothing was stored.
            QueueFullError: the batch would pass ``max_queued_jobs``; nothing was stored.
        """
        now = self._clock()
        batch_id = str(uuid.uuid4())
        log = with_ids(logger, batch_id=batch_id)
        job_ids: list[str] = []

        try:
            with self._sessions.begin() as session:
                record, skipped = self._insert_batch(
                    session, batch_id, spec, lines, model_name, now, tenant_id, job_ids, skipped_count
                )
                check_queue_depth(session, len(job_ids), max_queued_jobs)
                if idempotency is not None:
                    self._store_response(session, idempotency, "batch", batch_id, record)
        except IntegrityError as error:
            self._raise_if_claimed(error, idempotency)

        log.info("batch stored with %d queued jobs, %d invalid lines skipped", len(job_ids), skipped)
        return record, job_ids

    def _insert_batch(
        self,
        session,
        batch_id: str,
        spec: BatchSpec,
        lines: Iterable[BatchLine],
        model_name: str,
        now: datetime,
        tenant_id: str | None,
        job_ids: list[str],
        skipped_count: Callable[[], int],
    ) -> tuple[BatchRecord, int]:
        """Insert the batch row and its job rows in chunks, appending each job id to ``job_ids``.

        Returns the batch record and the number of skipped lines.
        """
        session.add(_new_batch_row(batch_id, spec, model_name, now, tenant_id))
        session.flush()

        chunk: list[dict[str, Any]] = []
        for line in lines:
            row = _job_row(batch_id, line, model_name, now, tenant_id)
            job_ids.append(row["id"])
            chunk.append(row)
            if len(chunk) >= INSERT_CHUNK_ROWS:
                session.execute(insert(Job), chunk)
                chunk = []
        if chunk:
            session.execute(insert(Job), chunk)
        if not job_ids:
            raise ValueError("a batch needs at least one valid line")

        skipped = skipped_count()
        session.execute(
            update(Batch).where(Batch.id == batch_id).values(line_count=len(job_ids), skipped_count=skipped)
        )
        batch = session.get(Batch, batch_id, populate_existing=True)
        return BatchRecord.from_row(batch), skipped

    def get_batch(self, batch_id: str, counts: bool = True, tenant_id: str | None = None) -> BatchRecord | None:
        """Return the batch, or None (also for a batch of another tenant than ``tenant_id``).

        With ``counts`` the jobs are aggregated, and the stored status, started_at and
        finished_at are brought up to date with them. Without, the stored copies are returned
        as they are, which is cheaper for a worker that only needs the batch's settings.
        """
        with self._sessions.begin() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or (tenant_id is not None and batch.tenant_id != tenant_id):
                return None
            if not counts:
                return BatchRecord.from_row(batch)

            aggregates = _batch_counts(session, batch_id)
            _refresh_batch(session, batch, aggregates)
            return BatchRecord.from_row(batch, aggregates)

    def batch_counts(self, batch_id: str) -> BatchCounts:
        """Return the aggregates of the batch's jobs; all zero for an unknown batch."""
        with self._sessions() as session:
            return _batch_counts(session, batch_id)

    def batch_job_ids(self, batch_id: str, status: str | None = None) -> list[str]:
        """Return the ids of the batch's jobs in line order, optionally of one status."""
        query = select(Job.id).where(Job.batch_id == batch_id).order_by(Job.line_number)
        if status is not None:
            query = query.where(Job.status == status)
        with self._sessions() as session:
            return list(session.scalars(query))

    def batch_results_range(self, batch_id: str, after_line: int = 0) -> ResultsRange:
        """Return the finished lines after ``after_line`` up to the first unfinished one."""
        with self._sessions() as session:
            end_line = session.scalar(
                select(func.min(Job.line_number)).where(
                    Job.batch_id == batch_id,
                    Job.status.in_(_UNFINISHED),
                    Job.line_number > after_line,
                )
            )
            query = select(func.count(), func.max(Job.line_number)).where(
                Job.batch_id == batch_id, Job.line_number > after_line
            )
            if end_line is not None:
                query = query.where(Job.line_number < end_line)
            count, last_line = session.execute(query).one()
        return ResultsRange(after_line=after_line, end_line=end_line, last_line=last_line, count=count)

    def iter_batch_results(
        self, batch_id: str, after_line: int = 0, results_range: ResultsRange | None = None
    ) -> Iterator[BatchResult]:
        """Yield finished jobs of the batch in input order, starting after ``after_line``.

        The iteration stops before the first job that was unfinished when it began (see
        `batch_results_range`), so a download that resumes after the last line it received
        never misses a line.

        NOTE: a job left running by a worker that died holds back every later line until the
        job is failed or finishes. Pass ``results_range`` to stream exactly a range computed earlier,
        for example the one whose last line was already sent in a header.
        """
        if results_range is None:
            results_range = self.batch_results_range(batch_id, after_line)
        position = results_range.after_line

        while True:
            query = (
                select(*_RESULT_COLUMNS)
                .where(Job.batch_id == batch_id, Job.line_number > position)
                .order_by(Job.line_number)
                .limit(RESULTS_PAGE_ROWS)
            )
            if results_range.end_line is not None:
                query = query.where(Job.line_number < results_range.end_line)
            with self._sessions() as session:
                rows = session.execute(query).all()

            for row in rows:
                yield BatchResult(job_id=row.id, **{key: row._mapping[key] for key in row._mapping.keys() if key != "id"})
            if len(rows) < RESULTS_PAGE_ROWS:
                return
            position = rows[-1].line_number

    def cancel_batch(self, batch_id: str, tenant_id: str | None = None) -> BatchCancelOutcome:
        """Cancel every queued job of the batch; running jobs finish and finished ones are kept.

        A batch of another tenant than ``tenant_id`` (when given) is reported as not found.

        Cancelling a batch that is already cancelling cancels jobs that are queued again (for
        example by a retry) and is otherwise harmless.
        """
        log = with_ids(logger, batch_id=batch_id)
        with self._sessions.begin() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or (tenant_id is not None and batch.tenant_id != tenant_id):
                return BatchCancelOutcome(found=False, cancelled_jobs=0, already_finished=False, batch=None)

            before = _batch_counts(session, batch_id)
            _refresh_batch(session, batch, before)
            if batch.status in (BatchStatus.COMPLETED.value, BatchStatus.CANCELLED.value):
                return BatchCancelOutcome(True, 0, True, BatchRecord.from_row(batch, before))

            now = self._clock()
            cancelled = session.execute(
                update(Job)
                .where(Job.batch_id == batch_id, Job.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELLED.value, cancelled_at=now, finished_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if batch.cancelled_at is None:
                batch.cancelled_at = now
            after = _batch_counts(session, batch_id)
            _refresh_batch(session, batch, after)
            record = BatchRecord.from_row(batch, after)

        log.info("batch cancel: %d queued jobs cancelled, %d still running", cancelled, after.by_status["running"])
        return BatchCancelOutcome(True, cancelled, False, record)


def derive_batch_status(cancel_requested: bool, counts: BatchCounts) -> str:
    """Return the batch status that ``counts`` imply; see `BatchStatus`."""
    if cancel_requested:
        return BatchStatus.CANCELLING.value if counts.unfinished else BatchStatus.CANCELLED.value
    if counts.total and not counts.unfinished:
        return BatchStatus.COMPLETED.value
    if counts.by_status[JobStatus.QUEUED.value] == counts.total:
        return BatchStatus.QUEUED.value
    return BatchStatus.RUNNING.value


def _new_batch_row(batch_id: str, spec: BatchSpec, model_name: str, now: datetime, tenant_id: str | None) -> Batch:
    return Batch(
        tenant_id=tenant_id,
        id=batch_id,
        status=BatchStatus.QUEUED.value,
        model_name=model_name,
        input_file_name=spec.input_file_name,
        line_count=0,
        skipped_count=0,
        defaults=spec.defaults,
        response_format=spec.response_format,
        validation_prompts=spec.validation_prompts,
        batch_metadata=spec.metadata,
        created_at=now,
    )


def _job_row(batch_id: str, line: BatchLine, model_name: str, now: datetime, tenant_id: str | None) -> dict[str, Any]:
    """Return the column values of a new queued job; must agree with `JobRepository.create_job`."""
    request = line.request.to_dict()
    return {
        "id": str(uuid.uuid4()),
        "status": JobStatus.QUEUED.value,
        "request": request,
        "prompt": line.request.prompt,
        "messages": request.get("messages"),
        "slot_steps": line.request.slot.steps,
        "slot_lr": line.request.slot.lr,
        "generation": request["generation"],
        "job_metadata": line.request.metadata,
        "model_name": model_name,
        "created_at": now,
        "queued_at": now,
        "attempts": 0,
        "overfit_policy": line.request.slot.overfit_policy,
        "batch_id": batch_id,
        "custom_id": line.custom_id,
        "line_number": line.line_number,
        "tenant_id": tenant_id,
    }


def _batch_counts(session, batch_id: str) -> BatchCounts:
    by_status = dict.fromkeys(STATUSES, 0)
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    )
    for status, count in rows:
        by_status[status] = count

    ran_statuses = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)
    totals = session.execute(
        select(
            func.count().filter(Job.format_ok.is_not(None)),
            func.count().filter(Job.format_ok.is_(True)),
            func.count().filter(Job.overfit.is_(True)),
            func.count().filter(Job.status.in_(ran_statuses), Job.started_at.is_not(None)),
            func.min(Job.started_at),
            func.max(Job.finished_at),
        ).where(Job.batch_id == batch_id)
    ).one()
    return BatchCounts(by_status, *totals)


def _refresh_batch(session, batch: Batch, counts: BatchCounts) -> None:
    """Bring the stored status, started_at and finished_at of ``batch`` up to date."""
    status = derive_batch_status(batch.cancelled_at is not None, counts)
    finished_at = counts.last_finished_at if status in (BatchStatus.COMPLETED.value, BatchStatus.CANCELLED.value) else None
    if (batch.status, batch.started_at, batch.finished_at) != (status, counts.first_started_at, finished_at):
        batch.status = status
        batch.started_at = counts.first_started_at
        batch.finished_at = finished_at
