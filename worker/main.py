"""Start a Celery worker for slot-queue with the process settings (``slotq worker``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from slotq.logging import configure_logging
from slotq.metrics import multiprocess_enabled, prepare_multiprocess_dir
from slotq.settings import load_settings
from worker.settings import load_process_settings

logger = logging.getLogger(__name__)

#: Broker URL schemes whose transports carry broadcast messages between processes. Gossip,
#: mingle and heartbeats use broadcasts, so they are switched off on the other transports
#: (kombu's SQLAlchemy and filesystem transports of the embedded mode).
BROADCAST_SCHEMES = ("redis://", "rediss://", "redis+socket://", "amqp://", "amqps://", "pyamqp://")


def worker_argv(concurrency: int | None = None, pool: str | None = None, hostname: str | None = None) -> list[str]:
    """Return the ``celery worker`` arguments for the settings and the given overrides."""
    settings = load_settings()
    process = load_process_settings()

    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={concurrency or process.worker_concurrency}",
        f"--pool={pool or process.worker_pool}",
        f"--queues={settings.queue}",
        f"--hostname={hostname or f'slotq-{os.getpid()}@%h'}",
        "--task-events",
    ]
    if not settings.broker_url.startswith(BROADCAST_SCHEMES):
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


def run_worker(concurrency: int | None = None, pool: str | None = None, hostname: str | None = None) -> int:
    """Run a Celery worker in this process until it is stopped; return its exit status.

    SIGTERM starts a warm shutdown: the running job finishes, then the worker exits.
    """
    if concurrency is not None and not 1 <= concurrency <= 64:
        from slotq.settings import SettingsError

        raise SettingsError(f"invalid --concurrency={concurrency}: must be an integer between 1 and 64")

    argv = worker_argv(concurrency, pool, hostname)
    settings = load_settings()
    # Celery replaces these handlers when it starts; until then they show the lines logged here.
    configure_logging(settings.log_level)
    _create_sqlite_broker_folder(settings.broker_url)
    stop_metrics = _serve_metrics(settings.worker_metrics_port)
    from worker.celery_app import app

    logger.info("starting Celery worker: %s", " ".join(argv))
    try:
        app.worker_main(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    finally:
        stop_metrics()
    return 0


def _serve_metrics(port: int) -> Callable[[], None]:
    """Serve this worker's Prometheus metrics on ``port`` (0: none); return the function that stops it.

    Must run before anything in this process imports prometheus_client, which picks its
    multiprocess mode on its first import; the pool processes inherit that mode.
    """
    if port == 0:
        return lambda: None

    metrics_dir = prepare_multiprocess_dir("worker")
    if not multiprocess_enabled():
        logger.error(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; the metrics of "
            "pool processes will be missing from port %d", port,
        )
    from worker.metrics import start_metrics_server

    server = start_metrics_server(port, metrics_dir.path)

    def stop() -> None:
        if server is not None:
            server.shutdown()
            server.server_close()
        metrics_dir.remove()

    return stop


def _create_sqlite_broker_folder(broker_url: str) -> None:
    # SQLite creates a missing database file but not its folder, and the Celery consumer would
    # retry "unable to open database file" forever.
    prefix = "sqla+sqlite:///"
    if broker_url.startswith(prefix) and len(broker_url) > len(prefix):
        Path(broker_url[len(prefix):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
