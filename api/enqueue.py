"""Sending jobs to the workers through the Celery broker, without importing the worker code.

The API image has no torch, so it must not import ``worker``: it sends the task by name.
Every successful send is recorded on the job (``enqueued_at``), so the sweeper knows which
queued jobs never got a message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from celery import Celery

from slotq.settings import Settings

logger = logging.getLogger(__name__)

#: Task that runs one job; its only argument is the job id.
RUN_JOB_TASK = "slotq.run_job"

#: Seconds to wait for the broker when sending, so a dead broker delays a submit only briefly.
SEND_TIMEOUT_S = 2.0

#: kombu publish retries: give up after about one second instead of retrying for long.
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}

#: ``enqueue(job_id)`` sends one job. An enqueue may also have ``many(job_ids)``, which sends
#: several over one connection; `enqueue_all` falls back to one call per job without it.
Enqueue = Callable[[str], None]

#: Jobs per send in `send_recorded`; each chunk's send is recorded before the next one starts.
SEND_CHUNK = 500


class SendRecorder(Protocol):
    """The part of the job store that `send_recorded` needs."""

    def mark_enqueued(self, job_ids: Sequence[str]) -> int: ...


class PartialSendError(Exception):
    """A send failed after ``sent`` jobs had been sent and recorded; ``__cause__`` is the error."""

    def __init__(self, sent: int, total: int, error: BaseException):
        super().__init__(f"sent {sent} of {total} jobs, then {type(error).__name__}: {error}")
        self.sent = sent
        self.total = total


def broker_transport_options(broker_url: str, timeout_s: float) -> dict[str, float]:
    """Return socket time limits for Redis brokers.

    kombu's SQLAlchemy transport passes every option on to ``sqlalchemy.create_engine``, which
    rejects unknown keywords, so other transports get no options.
    """
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    return {}


def enqueue_all(enqueue: Enqueue, job_ids: Sequence[str]) -> None:
    """Send every job in ``job_ids``, in order, with ``enqueue.many`` when it has one."""
    many = getattr(enqueue, "many", None)
    if many is not None:
        many(job_ids)
        return
    for job_id in job_ids:
        enqueue(job_id)


def send_recorded(enqueue: Enqueue, store: SendRecorder, job_ids: Sequence[str]) -> int:
    """Send ``job_ids`` in order, in chunks, and record each chunk's send in ``store``.

    Returns the number of jobs sent. Raises `PartialSendError` at the first chunk that fails;
    the chunks before it are sent and recorded, the rest are left for the sweeper.
    """
    for start in range(0, len(job_ids), SEND_CHUNK):
        chunk = list(job_ids[start : start + SEND_CHUNK])
        try:
            enqueue_all(enqueue, chunk)
        except Exception as error:
            raise PartialSendError(start, len(job_ids), error) from error
        store.mark_enqueued(chunk)
    return len(job_ids)


class CeleryEnqueue:
    """Sends `RUN_JOB_TASK` messages to one queue through a Celery producer app.

    Calls raise the broker's error (for example kombu's ``OperationalError``) when a message
    could not be sent; `many` stops at the first such message.
    """

    def __init__(self, producer_app: Celery, queue: str):
        self.producer_app = producer_app
        self.queue = queue

    def __call__(self, job_id: str) -> None:
        self.producer_app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=self.queue,
            retry=True,
            retry_policy=SEND_RETRY_POLICY,
        )

    def many(self, job_ids: Sequence[str]) -> None:
        """Send one message per job over a single pooled connection and producer."""
        with self.producer_app.producer_or_acquire() as producer:
            for job_id in job_ids:
                self.producer_app.send_task(
                    RUN_JOB_TASK,
                    args=[job_id],
                    queue=self.queue,
                    producer=producer,
                    retry=True,
                    retry_policy=SEND_RETRY_POLICY,
                )


def make_celery_enqueue(settings: Settings) -> CeleryEnqueue:
    """Return an enqueue that sends `RUN_JOB_TASK` to ``settings.queue``."""
    producer_app = Celery("slotq-api", broker=settings.broker_url, set_as_current=False)
    producer_app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_timeout=SEND_TIMEOUT_S,
        broker_transport_options=broker_transport_options(settings.broker_url, SEND_TIMEOUT_S),
    )

    return CeleryEnqueue(producer_app, settings.queue)
