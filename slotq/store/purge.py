"""Purge of old job texts: prompts, messages, outputs and δ go, measurements stay.

`PurgeStoreMixin` adds these methods to `slotq.store.repository.JobRepository`. A purged job
keeps its status, timestamps, token counts, δ norm and size, loss trace, timings, validation
losses, flags, format verdict, worker, attempts and error; its stored request keeps the slot
and generation parameters and the metadata. Purged rows get ``purged_at``, so a second purge
skips them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, null, select, update

from slotq.store.models import Batch, Job

#: Jobs updated per transaction, so a large purge holds no long lock and reports progress.
PURGE_CHUNK_ROWS = 500

#: Request fields that contain prompt text.
PROMPT_FIELDS = ("prompt", "messages")

#: Job columns that a purge sets to null: texts that can contain prompt or output text, and δ.
PURGED_JOB_COLUMNS = ("prompt", "messages", "output_text", "parsed_output", "format_error", "delta")


class PurgeStoreMixin:
    """Purge methods of `JobRepository`; they use its ``_sessions`` and ``_clock``."""

    def count_purgeable_jobs(self, finished_before: datetime) -> int:
        """Return the jobs finished before ``finished_before`` that were not purged yet."""
        with self._sessions() as session:
            return session.scalar(select(func.count()).where(*_purgeable_jobs(finished_before)))

    def purge_jobs(
        self, finished_before: datetime, on_chunk: Callable[[int], Any] = lambda rows: None
    ) -> int:
        """Purge every job finished before ``finished_before``; return how many were purged.

        Works in transactions of `PURGE_CHUNK_ROWS` jobs and calls ``on_chunk(rows)`` after
        each, so an interrupted purge keeps what it did and a rerun continues.
        """
        purged = 0
        while True:
            with self._sessions.begin() as session:
                rows = session.execute(
                    select(Job.id, Job.request)
                    .where(*_purgeable_jobs(finished_before))
                    .order_by(Job.id)
                    .limit(PURGE_CHUNK_ROWS)
                ).all()
                if not rows:
                    return purged
                jobs = Job.__table__
                # A Core executemany: one statement, one parameter set per job. null() stores
                # SQL NULL in the JSON columns, where None would store the JSON value null.
                session.connection().execute(
                    update(jobs)
                    .where(jobs.c.id == bindparam("job_id"), jobs.c.purged_at.is_(None))
                    .values(
                        request=bindparam("scrubbed"),
                        purged_at=self._clock(),
                        **{column: null() for column in PURGED_JOB_COLUMNS},
                    ),
                    [{"job_id": row.id, "scrubbed": _scrub_request(row.request)} for row in rows],
                )
            purged += len(rows)
            on_chunk(len(rows))

    def count_purgeable_batches(self, finished_before: datetime) -> int:
        """Return the batches finished before ``finished_before`` that were not purged yet."""
        with self._sessions() as session:
            return session.scalar(select(func.count()).where(*_purgeable_batches(finished_before)))

    def purge_batches(self, finished_before: datetime) -> int:
        """Remove the validation prompts of batches finished before ``finished_before``."""
        statement = (
            update(Batch)
            .where(*_purgeable_batches(finished_before))
            .values(validation_prompts=None, purged_at=self._clock())
            .execution_options(synchronize_session=False)
        )
        with self._sessions.begin() as session:
            return session.execute(statement).rowcount


def _purgeable_jobs(finished_before: datetime) -> tuple:
    return (Job.finished_at < finished_before, Job.purged_at.is_(None))


def _purgeable_batches(finished_before: datetime) -> tuple:
    return (Batch.finished_at < finished_before, Batch.purged_at.is_(None))


def _scrub_request(request: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in request.items() if name not in PROMPT_FIELDS}
