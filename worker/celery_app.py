"""The Celery app of slot-queue, configured from `slotq.settings` and `worker.settings`.

Delivery is at least once: tasks are acknowledged after they finish and rejected when their
worker process dies, so a lost task is delivered again. The job store's conditional status
updates make a second delivery of a running or finished job a no-op. Results live in the job
store, so Celery keeps none.
"""

from __future__ import annotations

from celery import Celery

from slotq.logging import LOG_FORMAT
from slotq.settings import Settings, load_settings
from worker.settings import ProcessSettings, load_process_settings

#: Name of the task that runs one job; the API sends it with the job id as its only argument.
RUN_JOB_TASK = "slotq.run_job"


def broker_transport_options(settings: Settings, process: ProcessSettings) -> dict:
    """Return transport options for the configured broker.

    Redis redelivers an unacknowledged task after the visibility timeout, so it is set above the
    hard time limit. kombu's SQLAlchemy transport passes every option to
    ``sqlalchemy.create_engine``, so it gets none.
    """
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": process.visibility_timeout_s}
    return {}


def configure(app: Celery, settings: Settings, process: ProcessSettings) -> None:
    """Apply slot-queue's Celery configuration to ``app``."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_transport_options(settings, process),
        broker_connection_retry_on_startup=True,
        # Keep reconnecting through a broker outage of any length (Celery stops after 100 tries
        # by default); queued jobs wait in the job store meanwhile.
        broker_connection_max_retries=None,
        # JSON only: a pickled message from the broker could run arbitrary code.
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per process: a long job must not hold further jobs that idle workers could run.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=process.task_soft_time_limit_s,
        task_time_limit=process.task_time_limit_s,
        # On a lost broker connection a running job keeps running and stores its result; the
        # redelivered message then finds the job finished and does nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=False,
        # Model loading in a fresh pool process can take minutes on a cold cache.
        worker_proc_alive_timeout=600.0,
        worker_log_format=LOG_FORMAT,
        worker_task_log_format=LOG_FORMAT,
        enable_utc=True,
        timezone="UTC",
    )


def create_app(settings: Settings | None = None, process: ProcessSettings | None = None) -> Celery:
    """Build a configured Celery app; the module-level `app` uses the environment's settings."""
    if settings is None:
        settings = load_settings()
    if process is None:
        process = load_process_settings()

    celery_app = Celery("slotq", include=["worker.tasks"])
    configure(celery_app, settings, process)
    return celery_app


app = create_app()
