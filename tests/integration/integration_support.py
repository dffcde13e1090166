"""Process and HTTP helpers for the integration tests: start, wait for and stop real processes."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from slotq.store.delta import decode_delta

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Seconds a started API may take until ``/readyz`` returns 200.
READY_TIMEOUT_S = 90.0
#: Seconds a finished job may take, model loading (and its one-time conversion) included.
JOB_TIMEOUT_S = 300.0
#: Seconds a process gets after SIGTERM before its process group is killed.
STOP_TIMEOUT_S = 30.0
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
TIMING_KEYS = {"queue_wait", "prefill", "optimize", "decode", "total"}


#: Converted bundled model, kept between runs and shared with the worker unit tests, so a
#: checkout converts it once.
MODEL_CACHE_DIR = Path(os.environ.get("SLOTQ_TEST_CACHE_DIR", PROJECT_ROOT / ".cache" / "slot-queue-tests"))
#: Seconds the one-time GGUF to safetensors conversion may take (about 15 s on two idle cores).
CONVERSION_TIMEOUT_S = 600


def convert_bundled_model() -> Path:
    """Convert the bundled model into `MODEL_CACHE_DIR` unless done already; return the folder.

    Fixtures call this once per session, so the time limits of the tests measure the service
    and not a first-time conversion. Fails the test when the conversion fails.
    """
    MODEL_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    convert = subprocess.run(
        [sys.executable, "-c", "from slot_core import load_model; load_model(device=\"cpu\")"],
        env={**os.environ, "SLOTQ_CACHE_DIR": str(MODEL_CACHE_DIR)},
        capture_output=True,
        text=True,
        timeout=CONVERSION_TIMEOUT_S,
    )
    if convert.returncode != 0:
        pytest.fail(f"converting the bundled model into {MODEL_CACHE_DIR} failed:\n{convert.stderr[-3000:]}")
    return MODEL_CACHE_DIR


@dataclass
class Started:
    """A process started by a test, in its own process group, with its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the process's log, for assertion messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """Return this process's environment without ``SLOTQ_*`` variables, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLOTQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def service_environment(
    database_url: str, broker: Mapping[str, str], cache_dir: Path, log_dir: Path, **extra: str
) -> dict[str, str]:
    """Return the environment of a module's slot-queue processes, after migrating its database.

    ``broker`` is the ``integration_broker`` fixture's URL and queue; ``extra`` adds or replaces
    ``SLOTQ_*`` variables.
    """
    env = child_environment({
        "SLOTQ_DATABASE_URL": database_url,
        "SLOTQ_BROKER_URL": broker["url"],
        "SLOTQ_QUEUE": broker["queue"],
        "SLOTQ_DATA_DIR": str(log_dir / "data"),
        "SLOTQ_CACHE_DIR": str(cache_dir),
        "SLOTQ_API_HOST": "127.0.0.1",
        "SLOTQ_API_WORKERS": "1",
        "SLOTQ_LOG_LEVEL": "INFO",
        **extra,
    })
    upgrade = run_slotq(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    return env


def start_slotq(name: str, arguments: list[str], env: Mapping[str, str], log_dir: Path) -> Started:
    """Start ``slotq ARGUMENTS`` in a new session, writing stdout and stderr to a log file."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "slotq.cli", *arguments],
            cwd=PROJECT_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Started(name, process, log_path)


def run_slotq(arguments: list[str], env: Mapping[str, str], timeout_s: float = 120.0, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``slotq ARGUMENTS`` to completion and return its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "slotq.cli", *arguments],
        cwd=PROJECT_ROOT,
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout_s,
    )


def descendants(started: Started) -> list[psutil.Process]:
    """Return every live descendant of the started process."""
    try:
        return psutil.Process(started.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop(started: Started, signum: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Send ``signum`` to the process, wait, then kill its whole process group.

    Returns the exit status it had before the group was killed, or None when it had to be killed.
    """
    process = started.process
    status = process.poll()
    if status is None:
        try:
            process.send_signal(signum)
            status = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            status = None

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return status


def kill_leftovers(processes: list[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL every process of ``processes`` that is still alive; return those that were."""
    alive = [process for process in processes if _is_alive(process)]
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return alive


@contextmanager
def running_api(env: Mapping[str, str], log_dir: Path) -> Iterator[tuple[str, Started]]:
    """Run `slotq api` on a free port until the block ends; yield its base URL and process."""
    port = free_port()
    started = start_slotq("api", ["api"], {**env, "SLOTQ_API_PORT": str(port)}, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [started])
        yield base_url, started
    finally:
        stop(started)


def wait_ready(base_url: str, started: list[Started], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until ``GET /readyz`` returns 200, and fail early when a started process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for item in started:
            if item.process.poll() is not None:
                raise AssertionError(
                    f"{item.name} exited with status {item.process.returncode} before the API was ready:\n"
                    f"{item.log_tail()}"
                )
        try:
            if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    logs = "\n".join(f"--- {item.name}\n{item.log_tail()}" for item in started)
    raise AssertionError(f"{base_url}/readyz did not return 200 within {timeout_s:.0f} s\n{logs}")


def auth(api_key: str) -> dict[str, str]:
    """Return the headers that authenticate a request with ``api_key``."""
    return {"Authorization": f"Bearer {api_key}"}


def create_api_key(env: Mapping[str, str], tenant: str) -> str:
    """Create an API key with `slotq keys create` on a migrated database and return it."""
    completed = run_slotq(["keys", "create", "--tenant", tenant], env)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def submit(base_url: str, body: dict[str, Any], api_key: str) -> str:
    """POST a job and return its id, asserting status 202."""
    response = requests.post(f"{base_url}/v1/jobs", json=body, headers=auth(api_key), timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_final(base_url: str, job_id: str, api_key: str, started: list[Started], timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    """Poll a job until it is final and return it; fail with the logs on a timeout."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = requests.get(f"{base_url}/v1/jobs/{job_id}", headers=auth(api_key), timeout=30)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in FINAL_STATUSES:
            return job
        time.sleep(0.5)
    logs = "\n".join(f"--- {item.name}\n{item.log_tail()}" for item in started)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout_s:.0f} s\n{logs}")


def job_row(database_url: str, job_id: str) -> dict:
    """Read a job's row straight from the database, JSON columns as stored text."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT delta, delta_dim, delta_norm, CAST(request AS TEXT) AS request_text, status "
                     "FROM jobs WHERE id = :id"),
                {"id": job_id},
            ).mappings().one()
            return dict(row)
    finally:
        engine.dispose()


def assert_succeeded_job(job: dict, row: dict, steps: int, max_new_tokens: int) -> None:
    """Check every field of a succeeded job against the request and the stored row."""
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert job["attempts"] == 1
    assert re.fullmatch(r".+/\d+", job["worker"]), job["worker"]
    assert isinstance(job["model"], str) and job["model"]

    created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    assert created <= started <= finished
    assert job["cancelled_at"] is None

    result = job["result"]
    assert isinstance(result["output_text"], str) and result["output_text"]
    assert 1 <= result["output_tokens"] <= max_new_tokens
    assert result["prompt_tokens"] > 0
    assert result["finish_reason"] in ("stop", "length")
    assert result["head_path"] in ("closed_form", "autograd")
    assert result["diverged_at"] is None
    assert result["steps_run"] == steps
    assert len(result["loss_trace"]) == steps + 1
    assert all(math.isfinite(loss) for loss in result["loss_trace"])
    assert result["delta_norm"] > 0

    timings = job["timings_ms"]
    assert set(timings) == TIMING_KEYS
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] >= timings["optimize"]

    stored_delta = decode_delta(row["delta"])
    assert row["status"] == "succeeded"
    assert row["delta_dim"] == result["delta_dim"] == len(stored_delta)
    assert len(row["delta"]) == 4 * row["delta_dim"]
    stored_norm = math.sqrt(sum(value * value for value in stored_delta))
    assert stored_norm == pytest.approx(result["delta_norm"], rel=1e-4)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
