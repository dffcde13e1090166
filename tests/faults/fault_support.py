"""Private Redis and Postgres servers that the fault tests crash and restart, and the service on them.

The servers run on free ports of 127.0.0.1 with their data in temporary folders, so stopping
one never disturbs the shared services on 5432 and 6379 or other test runs. Redis runs without
persistence, so a restart loses every message it held, as a crash of an unpersisted broker does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import requests
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.pool import NullPool

from integration_support import (
    Started,
    auth,
    child_environment,
    free_port,
    run_slotq,
    start_slotq,
    stop,
    wait_ready,
)

#: Folder of the PostgreSQL server programs (initdb, pg_ctl, postgres).
POSTGRES_BIN = Path(os.environ.get("SLOTQ_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
#: System user that runs PostgreSQL when the tests run as root, because initdb rejects root.
POSTGRES_USER = "postgres"
#: Seconds a private server may take to start or stop.
SERVER_TIMEOUT_S = 60.0
#: Seconds a worker may take from its start until it consumes jobs with its model loaded.
WORKER_READY_TIMEOUT_S = 180.0
#: Seconds between two polls of a job's status.
POLL_INTERVAL_S = 0.2

#: Line that Celery logs once the worker consumes its queues.
CELERY_READY = re.compile(r"\S+@\S+ ready\.")
#: Line that the pool process logs once its model is loaded (`worker.runtime`).
MODEL_LOADED = re.compile(r"loaded model .* in \d+\.\d s")


class PrivateRedis:
    """A ``redis-server`` without persistence on a free port, which tests crash and restart."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.port = free_port()
        self.log_path = work_dir / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on its port and wait until it responds to PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed; the fault tests need it for a private Redis")

        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(self.work_dir)]
        # Appending keeps the log of every run of the server in one file.
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(command, cwd=self.work_dir, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._responds_to_ping, SERVER_TIMEOUT_S, f"private Redis on port {self.port} to respond to PING",
                   self.log_tail)

    def crash(self) -> None:
        """Kill the server with SIGKILL: every queued and unacknowledged message is lost."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server with SIGTERM. Without persistence it keeps no data either."""
        self._end(signal.SIGTERM)

    def _end(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=SERVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, characters: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "<no log>"

    def _responds_to_ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"private Redis exited with status {self.process.returncode}:\n{self.log_tail()}")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder on a free port, with trust authentication.

    As root the server programs run as `POSTGRES_USER`, because initdb and postgres reject
    root, and the folder then belongs to that user.
    """

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "postgres.log"
        self.port = free_port()

    def initialise(self) -> None:
        """Create the cluster with initdb, without syncing to disk, because it is thrown away."""
        if not (POSTGRES_BIN / "initdb").exists():
            pytest.fail(f"PostgreSQL server programs not found in {POSTGRES_BIN}; set SLOTQ_TEST_POSTGRES_BIN")
        if os.geteuid() == 0:
            shutil.chown(self.root, user=POSTGRES_USER)
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--no-locale")

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections."""
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log_path),
                  "-t", str(int(SERVER_TIMEOUT_S)), "-w", "start")

    def stop(self) -> None:
        """Stop the server with the fast shutdown, which ends open sessions, so clients get errors."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-t", str(int(SERVER_TIMEOUT_S)), "-w", "stop")

    def is_running(self) -> bool:
        completed = subprocess.run(self._command("pg_ctl", "-D", str(self.data_dir), "status"),
                                   capture_output=True, text=True, timeout=SERVER_TIMEOUT_S)
        return completed.returncode == 0

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its URL."""
        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.data_dir.exists() and self.is_running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "<no log>"

    def _command(self, program: str, *arguments: str) -> list[str]:
        command = [str(POSTGRES_BIN / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", POSTGRES_USER, "--", *command]
        return command

    def _run(self, program: str, *arguments: str) -> None:
        completed = subprocess.run(self._command(program, *arguments), capture_output=True, text=True,
                                   timeout=SERVER_TIMEOUT_S + 30)
        if completed.returncode != 0:
            raise AssertionError(f"{program} {' '.join(arguments)} failed with status {completed.returncode}:\n"
                                 f"{completed.stdout}{completed.stderr}\n{self.log_tail()}")


class Service:
    """The slot-queue processes of one test: API, workers and sweeper, each with its log file."""

    def __init__(self, env: Mapping[str, str], log_dir: Path):
        self.env = dict(env)
        self.log_dir = log_dir
        self.processes: list[Started] = []
        self.base_url = ""

    def start_api(self) -> str:
        """Start `slotq api` on a free port, wait until ``/readyz`` returns 200 and return its URL."""
        port = free_port()
        started = self._start("api", ["api"], {"SLOTQ_API_PORT": str(port)})
        self.base_url = f"http://127.0.0.1:{port}"
        wait_ready(self.base_url, [started])
        return self.base_url

    def start_worker(self, name: str) -> Started:
        """Start `slotq worker` and wait until it consumes its queue with the model loaded."""
        started = self._start(name, ["worker"], {})
        wait_for_log(started, CELERY_READY, WORKER_READY_TIMEOUT_S)
        wait_for_log(started, MODEL_LOADED, WORKER_READY_TIMEOUT_S)
        return started

    def start_sweeper(self) -> Started:
        """Start `slotq sweeper` and wait until it logs that it started."""
        started = self._start("sweeper", ["sweeper"], {})
        wait_for_log(started, re.compile("sweeper started"), SERVER_TIMEOUT_S)
        return started

    def stop_all(self) -> None:
        """Stop every process with SIGTERM, killing its process group after a grace period."""
        for started in reversed(self.processes):
            stop(started)

    def logs(self, lines: int = 60) -> str:
        """Return the last ``lines`` log lines of every process, for assertion messages."""
        return "\n".join(f"--- {started.name}\n{started.log_tail(lines)}" for started in self.processes)

    def _start(self, name: str, arguments: list[str], extra: Mapping[str, str]) -> Started:
        started = start_slotq(name, arguments, {**self.env, **extra}, self.log_dir)
        self.processes.append(started)
        return started


@dataclass
class FaultStack:
    """Servers, database, processes and API key of one fault test."""

    postgres: PrivatePostgres
    redis: PrivateRedis
    database_url: str
    service: Service
    api_key: str


def service_environment(database_url: str, broker_url: str, data_dir: Path, cache_dir: Path,
                        extra: Mapping[str, str]) -> dict[str, str]:
    """Return the environment of every slot-queue process of one fault test.

    The lease, sweep interval and send grace are the shortest the settings allow, so the sweeper
    repairs a fault within seconds. Metrics servers are off, so parallel runs share no port.
    Each process gets one OpenMP thread, because the worker shares the cores with the API, the
    sweeper and the test: on two busy cores, decoding 100 tokens took 29 s with two threads and
    7 s with one.
    """
    return child_environment({
        "SLOTQ_DATABASE_URL": database_url,
        "SLOTQ_BROKER_URL": broker_url,
        "SLOTQ_QUEUE": "slotq-faults",
        "SLOTQ_DATA_DIR": str(data_dir),
        "SLOTQ_CACHE_DIR": str(cache_dir),
        "SLOTQ_API_HOST": "127.0.0.1",
        "SLOTQ_API_WORKERS": "1",
        "SLOTQ_LOG_LEVEL": "INFO",
        "SLOTQ_DEVICE": "cpu",
        "SLOTQ_LEASE_S": "5",
        "SLOTQ_SWEEP_INTERVAL_S": "0.5",
        "SLOTQ_ENQUEUE_GRACE_S": "2",
        "SLOTQ_MAX_ATTEMPTS": "3",
        "SLOTQ_SWEEPER_METRICS_PORT": "0",
        "SLOTQ_WORKER_METRICS_PORT": "0",
        "OMP_NUM_THREADS": "1",
        **extra,
    })


def migrate(env: Mapping[str, str]) -> None:
    """Apply the migrations with `slotq db upgrade`."""
    completed = run_slotq(["db", "upgrade"], env)
    assert completed.returncode == 0, completed.stderr


def kill_group(started: Started) -> None:
    """SIGKILL every process of the group at once, parent and pool children alike, and reap the parent."""
    try:
        os.killpg(started.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    started.process.wait(timeout=30)


def wait_for_exit(processes: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited and return those still running after ``timeout_s``.

    A zombie counts as exited: it runs no code, and reaping it is up to its new parent.
    """
    deadline = time.monotonic() + timeout_s
    running = [process for process in processes if _is_running(process)]
    while running and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        running = [process for process in running if _is_running(process)]
    return running


def _is_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str,
               details: Callable[[], str] = lambda: "") -> Any:
    """Poll ``condition`` until it returns a true value and return that value, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{details()}")


def wait_for_log(started: Started, pattern: re.Pattern, timeout_s: float, count: int = 1) -> None:
    """Wait until ``count`` matches of ``pattern`` are in the process's log, and fail early when it exits."""

    def logged() -> bool:
        if started.process.poll() is not None:
            raise AssertionError(f"{started.name} exited with status {started.process.returncode}:\n"
                                 f"{started.log_tail()}")
        content = started.log_path.read_text(encoding="utf-8", errors="replace")
        return len(pattern.findall(content)) >= count

    wait_until(logged, timeout_s, f"{count} matches of {pattern.pattern!r} in the log of {started.name}",
               started.log_tail)


def submit_job(base_url: str, api_key: str, body: Mapping[str, Any]) -> str:
    """POST a job, assert 202 and return its id."""
    response = requests.post(f"{base_url}/v1/jobs", json=dict(body), headers=auth(api_key), timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_status(service: Service, api_key: str, job_id: str, statuses: Iterable[str],
                timeout_s: float) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job's status is one of ``statuses`` and return the job."""
    expected = set(statuses)

    def reached() -> dict[str, Any] | None:
        response = requests.get(f"{service.base_url}/v1/jobs/{job_id}", headers=auth(api_key), timeout=30)
        assert response.status_code == 200, response.text
        job = response.json()
        return job if job["status"] in expected else None

    return wait_until(reached, timeout_s, f"job {job_id} to reach {sorted(expected)}", service.logs)


def job_rows(database_url: str, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Read the delivery columns of jobs straight from the database, keyed by job id."""
    query = text(
        "SELECT id, status, attempts, worker, enqueued_at, started_at, finished_at, lease_expires_at, "
        "output_text, error FROM jobs WHERE id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, {"ids": list(job_ids)}).mappings().all()
    finally:
        engine.dispose()
    return {row["id"]: dict(row) for row in rows}


def job_ids(database_url: str) -> list[str]:
    """Return the id of every job in the database."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text("SELECT id FROM jobs")).scalars())
    finally:
        engine.dispose()


def log_lines(processes: Iterable[Started], job_id: str, message: str) -> list[str]:
    """Return the log lines of ``processes`` about ``job_id`` whose message starts with ``message``."""
    # `slotq.logging.with_ids` starts a message with key=value pairs, job_id first.
    pattern = re.compile(rf"job_id={re.escape(job_id)}( \w+=\S+)* {re.escape(message)}")
    found = []
    for started in processes:
        content = started.log_path.read_text(encoding="utf-8", errors="replace")
        found += [line for line in content.splitlines() if pattern.search(line)]
    return found
