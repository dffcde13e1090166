"""Leases of running jobs and records of sends to the broker, for workers and the sweeper.

`LeaseStoreMixin` adds these methods to `slotq.store.repository.JobRepository`.

A claim gives the worker a lease (``lease_expires_at``) that it renews while it runs the job.
A worker that dies stops renewing. Once the lease has passed, `requeue_expired` queues the job
again, or fails it when it has used its last attempt. Every change is a conditional update on
the status and the attempt number, so a sweep that races a worker's late result, or another
sweeper, changes nothing twice.

``enqueued_at`` records the last successful send of a task message for a queued job. Null
means that no send has succeeded since the job was queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from slotq.store.models import Job, JobStatus

#: Job ids per ``IN (...)`` list, well below the parameter limits of SQLite and psycopg2.
ID_CHUNK = 500


@dataclass(frozen=True)
class Claim:
    """A job held by one worker: the job id and the attempt number of the claim."""

    job_id: str
    attempt: int


@dataclass(frozen=True)
class ExpiredLeases:
    """Outcome of one `requeue_expired` call: job ids queued again and job ids failed."""

    requeued: list[str]
    failed: list[str]


class LeaseStoreMixin:
    """Lease and send-tracking methods of `JobRepository`; they use ``_sessions`` and ``_clock``."""

    def renew_leases(self, claims: Sequence[Claim], worker: str, lease_s: float) -> list[str]:
        """Extend the leases of jobs that ``worker`` still holds; return the ids it no longer holds.

        A job is held while it is running under the same attempt and worker. A job that the
        sweeper queued again, or that finished, is returned so the worker can log that its
        result will not be stored.
        """
        expires = self._clock() + timedelta(seconds=lease_s)
        lost = []
        with self._sessions.begin() as session:
            for claim in claims:
                statement = (
                    update(Job)
                    .where(
                        Job.id == claim.job_id,
                        Job.status == JobStatus.RUNNING.value,
                        Job.attempts == claim.attempt,
                        Job.worker == worker,
                    )
                    .values(lease_expires_at=expires)
                    .execution_options(synchronize_session=False)
                )
                if session.execute(statement).rowcount != 1:
                    lost.append(claim.job_id)
        return lost

    def requeue_expired(self, max_attempts: int, limit: int) -> ExpiredLeases:
        """Queue again up to ``limit`` running jobs whose lease has passed.

        A job that has used ``max_attempts`` attempts fails instead, with the reason. A requeued
        job keeps its ``queued_at``, so batching claims it before jobs queued after it, and gets
        ``enqueued_at`` null, so the sweeper sends it a new message.
        """
        now = self._clock()
        query = (
            select(Job.id, Job.attempts, Job.worker)
            .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at)
            .limit(limit)
        )
        with self._sessions() as session:
            expired = list(session.execute(query))

        requeued, failed = [], []
        for job_id, attempts, worker in expired:
            if attempts >= max_attempts:
                if self._fail_expired(job_id, attempts, worker, now):
                    failed.append(job_id)
            elif self._requeue(job_id, attempts, now):
                requeued.append(job_id)
        return ExpiredLeases(requeued=requeued, failed=failed)

    def unsent_jobs(self, queued_before: datetime, limit: int) -> list[str]:
        """Return up to ``limit`` queued jobs with no successful send, queued before ``queued_before``.

        The API sends a job right after storing it; ``queued_before`` leaves it that much time
        before the sweeper takes the send for failed.
        """
        query = (
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED.value,
                Job.enqueued_at.is_(None),
                Job.queued_at < queued_before,
            )
            .order_by(Job.queued_at, Job.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return list(session.scalars(query))

    def count_sent_queued(self, sent_before: datetime) -> int:
        """Return how many queued jobs had their last message sent before ``sent_before``."""
        query = select(func.count()).where(
            Job.status == JobStatus.QUEUED.value, Job.enqueued_at < sent_before
        )
        with self._sessions() as session:
            return session.scalar(query)

    def oldest_sent_queued(self, sent_before: datetime, limit: int) -> list[str]:
        """Return up to ``limit`` queued jobs whose last message was sent longest ago."""
        query = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at < sent_before)
            .order_by(Job.enqueued_at, Job.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return list(session.scalars(query))

    def mark_enqueued(self, job_ids: Iterable[str]) -> int:
        """Record that a task message was sent now for each queued job in ``job_ids``."""
        now = self._clock()
        ids = list(job_ids)
        marked = 0
        with self._sessions.begin() as session:
            for start in range(0, len(ids), ID_CHUNK):
                statement = (
                    update(Job)
                    .where(Job.id.in_(ids[start : start + ID_CHUNK]), Job.status == JobStatus.QUEUED.value)
                    .values(enqueued_at=now)
                    .execution_options(synchronize_session=False)
                )
                marked += session.execute(statement).rowcount
        return marked

    def _requeue(self, job_id: str, attempts: int, now: datetime) -> bool:
        statement = (
            update(Job)
            .where(*_still_expired(job_id, attempts, now))
            .values(status=JobStatus.QUEUED.value, worker=None, lease_expires_at=None, enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            return session.execute(statement).rowcount == 1

    def _fail_expired(self, job_id: str, attempts: int, worker: str | None, now: datetime) -> bool:
        error = (
            f"gave up after {attempts} attempts: the worker of the last attempt ({worker}) stopped "
            "renewing its lease; it was killed (for example by the hard time limit "
            "SLOTQ_TASK_TIME_LIMIT_S or for lack of memory), lost its host, or hung"
        )
        statement = (
            update(Job)
            .where(*_still_expired(job_id, attempts, now))
            .values(status=JobStatus.FAILED.value, finished_at=now, error=error, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            return session.execute(statement).rowcount == 1


def _still_expired(job_id: str, attempts: int, now: datetime) -> tuple:
    """Conditions that hold only while the job is running the same attempt past its lease."""
    return (
        Job.id == job_id,
        Job.status == JobStatus.RUNNING.value,
        Job.attempts == attempts,
        Job.lease_expires_at < now,
    )
