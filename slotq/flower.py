"""The ``slotq flower`` command: Flower, Celery's web monitor, on the broker of slot-queue.

Flower follows the task events that workers send (``worker_send_task_events`` in
`worker.celery_app`). Each job is one task named ``slotq.run_job`` whose only argument is the job
id, so ``GET /api/tasks?taskname=slotq.run_job&search=args:JOB_ID`` finds the task of a job.

Flower keeps at most ``SLOTQ_FLOWER_MAX_TASKS`` tasks, in memory only: a restarted Flower starts
empty and shows tasks from events it receives after the start. Every page and every ``/api``
endpoint needs HTTP basic authentication, so `run_flower` stops with a `SettingsError` when
``SLOTQ_FLOWER_BASIC_AUTH`` is unset. Flower 2.2 serves ``/metrics`` and ``/healthcheck`` without
authentication. Other Flower options can be set as ``FLOWER_*`` variables, but the options that
this module passes win over them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from slotq.logging import configure_logging
from slotq.settings import Settings, SettingsError, basic_auth_credentials, load_settings

logger = logging.getLogger(__name__)

#: Broker URL schemes whose transports carry Celery events between processes. kombu's
#: SQLAlchemy transport of the embedded mode delivers events only inside one process.
EVENT_BROKER_SCHEMES = ("redis://", "rediss://", "redis+socket://", "amqp://", "amqps://", "pyamqp://")
#: Exit status when Flower fails to start, as ``slotq.cli.EXIT_FAILURE``.
EXIT_FAILURE = 1


class FlowerStartError(Exception):
    """Flower could not start, for example because its port is taken."""


def add_flower_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``slotq flower`` on the ``slotq`` command's subparsers."""
    parser = subparsers.add_parser(
        "flower",
        help="run Flower, the Celery web monitor, with HTTP basic authentication",
        description="Run Flower on SLOTQ_BROKER_URL until SIGINT or SIGTERM. It needs "
        "SLOTQ_FLOWER_BASIC_AUTH=user:password and keeps the last SLOTQ_FLOWER_MAX_TASKS tasks "
        "in memory. Find a job's task with GET /api/tasks?taskname=slotq.run_job&search=args:JOB_ID.",
    )
    parser.add_argument("--host", help="address to bind (default: SLOTQ_FLOWER_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port to bind (default: SLOTQ_FLOWER_PORT, else 5555)")
    parser.set_defaults(handler=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        return run_flower(settings, host=args.host, port=args.port)
    except FlowerStartError as error:
        print(f"slotq flower: {error}", file=sys.stderr)
        return EXIT_FAILURE


def run_flower(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Run Flower in this process until it is stopped; return its exit status.

    Raises:
        SettingsError: ``SLOTQ_FLOWER_BASIC_AUTH`` is unset, the broker cannot carry events, or
            ``port`` is out of range.
        FlowerStartError: Flower could not bind ``host:port``.
    """
    host = host or settings.flower_host
    port = settings.flower_port if port is None else port
    check_flower_settings(settings, port)

    argv = flower_argv(settings, host, port)
    app = flower_celery_app(settings)
    logger.info(
        "starting Flower on http://%s:%d for broker %s, keeping at most %d tasks in memory",
        host, port, maybe_sanitize_url(settings.broker_url), settings.flower_max_tasks,
    )
    try:
        status = app.start(argv)
    except OSError as error:
        raise FlowerStartError(f"failed to start Flower on {host}:{port}: {error}") from error
    logger.info("Flower stopped")
    return status or 0


def check_flower_settings(settings: Settings, port: int) -> None:
    """Raise `SettingsError` unless authentication is set and the broker carries events."""
    if not settings.flower_basic_auth:
        raise SettingsError(
            "SLOTQ_FLOWER_BASIC_AUTH is not set: Flower does not start without HTTP basic "
            "authentication. Set it to user:password, or several as user1:password1,user2:password2"
        )
    if not settings.broker_url.startswith(EVENT_BROKER_SCHEMES):
        raise SettingsError(
            f"SLOTQ_BROKER_URL={maybe_sanitize_url(settings.broker_url)!r} cannot carry Celery "
            "events between processes, so Flower would show no tasks. Set it to the Redis or "
            "AMQP broker of the workers, for example redis://127.0.0.1:6379/0"
        )
    if not 1 <= port <= 65535:
        raise SettingsError(f"invalid --port={port}: must be an integer between 1 and 65535")


def flower_argv(settings: Settings, host: str, port: int) -> list[str]:
    """Return the ``celery flower`` arguments; they contain the passwords, so never log them."""
    credentials = ",".join(basic_auth_credentials(settings.flower_basic_auth))
    return [
        "flower",
        f"--address={host}",
        f"--port={port}",
        f"--basic_auth={credentials}",
        f"--max_tasks={settings.flower_max_tasks}",
        # State lives in memory only, so the task history stays bounded by max_tasks and no
        # database file of Flower is written.
        "--persistent=False",
        f"--logging={settings.log_level.lower()}",
    ]


def flower_celery_app(settings: Settings) -> Celery:
    """Return a Celery app for Flower with the workers' broker, queue and serializers.

    It does not include ``worker.tasks``: Flower imports the app's task modules, and those load
    torch. Flower learns task names from the events instead.
    """
    app = Celery("slotq-flower", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # JSON only, as in worker.celery_app: a pickled event could run arbitrary code.
        accept_content=["json"],
        task_serializer="json",
        event_serializer="json",
        result_serializer="json",
        task_ignore_result=True,
        # Flower's queue-length API and broker page list the default queue.
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
        timezone="UTC",
    )
    return app
