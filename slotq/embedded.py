"""The single-machine stack behind ``slotq serve`` and ``slotq demo``: API, one worker, sweeper.

With no configuration the job store and the broker are SQLite files in ``SLOTQ_DATA_DIR``
(kombu's SQLAlchemy transport carries the Celery messages), so nothing else has to run. With
``SLOTQ_DATABASE_URL`` and ``SLOTQ_BROKER_URL`` set, the same processes use those servers.

`Stack` starts ``slotq api``, ``slotq worker`` and ``slotq sweeper`` as child processes, each in
its own session (process group), so a terminal's Ctrl-C reaches only the parent. The parent then
stops them in order, and kills any process group that outlives the grace period.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from slotq.logging import configure_logging
from slotq.settings import Settings, load_settings

logger = logging.getLogger(__name__)

#: Seconds to wait after start until ``GET /readyz`` returns 200.
READY_TIMEOUT_S = 120.0
#: Seconds each child gets to exit after SIGTERM before its process group is killed. A worker
#: finishes its running job during this time, so a long job is cut off and stays running in
#: the store until it is swept.
STOP_GRACE_S = 30.0
#: Seconds between checks of the children while the stack runs.
POLL_INTERVAL_S = 0.5

_PR_SET_PDEATHSIG = 1


class StackError(Exception):
    """The embedded stack failed to start or one of its processes exited."""


class Stack:
    """API and worker processes started together and stopped together.

    Args:
        env: environment of the children; ``SLOTQ_*`` variables in it configure them.
        log_file: where the children write their logs; None means this process's stderr.
    """

    def __init__(self, env: Mapping[str, str], log_file: IO | None = None):
        self.env = dict(env)
        self.settings = load_settings(self.env)
        self.log_file = log_file
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """Base URL of the API; a wildcard bind address is reached through the loopback."""
        host = self.settings.api_host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.api_port}"

    def migrate(self) -> None:
        """Apply the database migrations, creating the SQLite file on first use."""
        from slotq.store.migrate import upgrade

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(self.settings.database_url)
        logger.info("database migrated")

    def start(self) -> None:
        """Start the worker, sweeper and API processes without waiting for them (see `wait_ready`)."""
        self.processes["worker"] = self._spawn(["worker"])
        self.processes["sweeper"] = self._spawn(["sweeper"])
        self.processes["api"] = self._spawn(["api"])
        for name, process in self.processes.items():
            logger.info("started %s process %d", name, process.pid)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until ``GET /readyz`` returns 200.

        Raises:
            StackError: a child exited, or the API was not ready within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if _is_ready(self.url):
                logger.info("API ready at %s", self.url)
                return
            time.sleep(POLL_INTERVAL_S)
        raise StackError(f"the API at {self.url} was not ready within {timeout_s:.0f} s")

    def check_alive(self) -> None:
        """Raise `StackError` when a child process has exited."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise StackError(f"the {name} process {process.pid} exited with status {code}")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the API, the sweeper, then the worker: SIGTERM, then SIGKILL of the group after
        ``grace_s``.

        A job that the worker is still running when it is killed stays running in the store.
        On the next start the sweeper finds its lease passed and queues it again.
        """
        for name in ("api", "sweeper", "worker"):
            process = self.processes.get(name)
            if process is not None:
                _stop_process_group(name, process, grace_s)
        self.processes.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        output = self.log_file if self.log_file is not None else None
        return subprocess.Popen(
            [sys.executable, "-m", "slotq.cli", *command],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )


def serve(host: str | None = None, port: int | None = None, data_dir: str | None = None) -> int:
    """Run the stack until SIGINT or SIGTERM; return 0 after a clean stop, 1 when a child died."""
    env = stack_environment(os.environ, host=host, port=port, data_dir=data_dir)
    settings = load_settings(env)
    configure_logging(settings.log_level)
    _log_mode(settings)

    stop_requested = _install_stop_handlers()
    stack = Stack(env)
    try:
        _check_port_free(settings.api_host, settings.api_port)
        stack.migrate()
        stack.start()
        stack.wait_ready()
        logger.info("serving on %s; press Ctrl-C to stop", stack.url)
        while not stop_requested:
            stack.check_alive()
            time.sleep(POLL_INTERVAL_S)
        logger.info("received %s, stopping", stop_requested[0])
        return 0
    except StackError as error:
        logger.error("stopping the stack: %s", error)
        return 1
    finally:
        stack.stop()
        logger.info("stopped")


def stack_environment(
    base: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Return ``base`` with the command-line overrides written as ``SLOTQ_*`` variables."""
    env = dict(base)
    if host:
        env["SLOTQ_API_HOST"] = host
    if port is not None:
        env["SLOTQ_API_PORT"] = str(port)
    if data_dir:
        env["SLOTQ_DATA_DIR"] = str(Path(data_dir).expanduser())
    return env


def _log_mode(settings: Settings) -> None:
    if settings.embedded:
        logger.info("embedded mode: SQLite job store and broker in %s", settings.data_dir)
    else:
        logger.info("external mode: SLOTQ_DATABASE_URL and SLOTQ_BROKER_URL from the environment")


def _install_stop_handlers() -> list[str]:
    """Turn SIGINT and SIGTERM into a stop request; the returned list is non-empty once stopped."""
    requested: list[str] = []

    def request_stop(signum: int, _frame: object) -> None:
        requested.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return requested


def _check_port_free(host: str, port: int) -> None:
    """Raise `StackError` when another process listens on ``host:port``.

    Without this check, the readiness probe would get its response from that other server and
    report the stack ready while its own API fails to bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # gunicorn binds with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise StackError(
                f"cannot serve on {host}:{port}: {error.strerror}; stop the server that uses the port "
                "or choose another one with --port"
            ) from error


def _is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_process_group(name: str, process: subprocess.Popen, grace_s: float) -> None:
    if process.poll() is None:
        logger.info("stopping %s process %d", name, process.pid)
        # Only the leader gets SIGTERM: gunicorn's master and Celery's main process each stop
        # their own children in order, and a pool process hit directly would lose its job.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s process %d did not stop within %.0f s; killing it", name, process.pid, grace_s)

    # Children of the child (gunicorn workers, Celery pool processes) share its process group;
    # kill whatever of the group is left, even when the leader already exited.
    _signal_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        logger.error("%s process %d is still running after SIGKILL", name, process.pid)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
