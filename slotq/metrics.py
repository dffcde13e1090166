"""Prometheus multiprocess mode shared by ``slotq api`` and ``slotq worker``, and the metrics
HTTP server of the worker and the sweeper.

gunicorn and Celery's prefork pool run requests and jobs in forked child processes. In
prometheus_client's multiprocess mode every process writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR``, and the process that serves a scrape adds them up. prometheus_client
picks the mode when it is first imported, so `prepare_multiprocess_dir` must run before anything
imports it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Address of the metrics servers of workers and sweepers: every interface, so Prometheus can
#: scrape them from another host or pod.
METRICS_ADDRESS = "0.0.0.0"

#: Histogram buckets in seconds, from 50 ms (a short CPU stage) to 30 minutes (the default soft
#: time limit of a job).
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)

# Files of gauges whose multiprocess mode keeps only live processes: "gauge_livesum_<pid>.db".
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


@dataclass(frozen=True)
class MultiprocessDir:
    """The folder of this process tree's metric files.

    ``created`` is True when process ``owner_pid`` made a temporary folder because the operator
    set none; `remove` then deletes it.
    """

    path: Path
    created: bool
    owner_pid: int

    def remove(self) -> None:
        """Delete a folder that this process created; an operator's folder is kept.

        A forked child that unwinds through the caller's ``finally`` (gunicorn workers leave
        with SystemExit) leaves the folder alone, because its siblings still write there.
        """
        if self.created and os.getpid() == self.owner_pid:
            shutil.rmtree(self.path, ignore_errors=True)


def prepare_multiprocess_dir(role: str) -> MultiprocessDir:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder for this process and its children.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is created if missing, and its ``*.db`` files are
    deleted, because files of an earlier run would add stale counts. Without one, a temporary
    folder named after ``role`` is made. Each ``slotq api`` and each ``slotq worker`` needs a
    folder of its own: the cleaning at start deletes another process tree's files.
    """
    configured = os.environ.get(MULTIPROC_ENV, "").strip()
    if configured:
        path = Path(configured).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        stale = glob.glob(str(path / "*.db"))
        for name in stale:
            os.remove(name)
        created = False
    else:
        _remove_abandoned_dirs(role)
        path = Path(tempfile.mkdtemp(prefix=f"slotq-{role}-metrics-{os.getpid()}-"))
        created = True

    os.environ[MULTIPROC_ENV] = str(path)
    logger.info("Prometheus multiprocess folder of %s: %s (created=%s)", role, path, created)
    return MultiprocessDir(path, created, os.getpid())


def _remove_abandoned_dirs(role: str) -> None:
    """Delete temporary folders of ``role`` whose creating process no longer runs.

    A process killed by a signal before it could clean up (SIGKILL, or SIGTERM before Celery
    installs its handlers) leaves its folder behind.
    """
    pattern = re.compile(rf"slotq-{re.escape(role)}-metrics-(\d+)-\w+")
    for folder in Path(tempfile.gettempdir()).iterdir():
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir() and not _process_alive(int(match.group(1))):
            logger.info("deleting the metrics folder %s of process %s, which no longer runs", folder, match.group(1))
            shutil.rmtree(folder, ignore_errors=True)


def multiprocess_enabled() -> bool:
    """Return True when prometheus_client in this process writes its samples to files."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


def remove_dead_process_gauges(path: str | Path) -> list[int]:
    """Delete the live-gauge files of processes that no longer run; return their pids.

    prometheus_client keeps a ``live*`` gauge of a process until ``mark_process_dead`` is
    called, and a pool child killed by a signal never calls it.
    """
    from prometheus_client import multiprocess

    dead = []
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match and not _process_alive(int(match.group(1))):
            dead.append(int(match.group(1)))
    for pid in sorted(set(dead)):
        multiprocess.mark_process_dead(pid, str(path))
    return sorted(set(dead))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The pid exists but belongs to another user.
        return True
    return True


def serve_metrics(registry: Any, port: int, process: str, variable: str) -> Any | None:
    """Serve ``registry`` at ``http://METRICS_ADDRESS:port/metrics``; return the server.

    Returns None, after logging an error that names the setting ``variable``, when the port
    cannot be bound: the ``process`` (worker or sweeper) then keeps working without metrics,
    because losing its metrics is better than losing its work.
    """
    # Imported here: prometheus_client picks its multiprocess mode on its first import, which
    # must come after `prepare_multiprocess_dir`.
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=METRICS_ADDRESS, registry=registry)
    except OSError as error:
        logger.error(
            "%s metrics not served: cannot bind %s:%d: %s; set %s to a free port, or to 0 to turn the "
            "metrics off", process, METRICS_ADDRESS, port, error, variable,
        )
        return None

    logger.info("serving %s metrics on http://%s:%d/metrics", process, METRICS_ADDRESS, port)
    return server
