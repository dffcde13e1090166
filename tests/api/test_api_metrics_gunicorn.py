"""``GET /metrics`` of a real ``slotq api`` with two gunicorn workers, over HTTP.

Requests are spread over both worker processes on purpose: one worker is kept busy with a
request whose headers arrive slowly, so the other one serves the rest.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 15
HEALTHZ = {"method": "GET", "route": "/healthz", "status": "200"}


@dataclass
class ApiProcess:
    process: subprocess.Popen
    url: str
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def start_api(postgres_url: str, tmp_path: Path, port: int, extra_env: dict[str, str]) -> ApiProcess:
    env = {
        **{name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"},
        "SLOTQ_DATA_DIR": str(tmp_path),
        "SLOTQ_DATABASE_URL": postgres_url,
        "SLOTQ_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        **extra_env,
    }
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "slotq.cli", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = ApiProcess(process, f"http://127.0.0.1:{port}", port, log_path)

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"slotq api exited with {process.returncode}:\n{api.log()}")
        try:
            if requests.get(f"{api.url}/healthz", timeout=1).status_code == 200:
                return api
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    stop_api(api)
    pytest.fail(f"slotq api not healthy after {STARTUP_TIMEOUT_S} s:\n{api.log()}")


def stop_api(api: ApiProcess) -> None:
    if api.process.poll() is not None:
        return
    api.process.send_signal(signal.SIGTERM)
    try:
        api.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(api.process.pid, signal.SIGKILL)
        api.process.wait(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture
def api_factory(postgres_url: str, postgres_repository, tmp_path: Path, closed_port: int) -> Iterator:
    started: list[ApiProcess] = []

    def start(**extra_env: str) -> ApiProcess:
        api = start_api(postgres_url, tmp_path, closed_port, extra_env)
        started.append(api)
        return api

    yield start
    for api in started:
        stop_api(api)


def scrape(api: ApiProcess) -> dict:
    response = requests.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def spread_healthz_requests(api: ApiProcess, quick_requests: int) -> None:
    """Send ``quick_requests`` + 1 requests of ``/healthz`` that two worker processes serve."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as slow:
        # The worker that accepts this connection waits for the rest of the headers.
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.5)
        for _ in range(quick_requests):
            assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
        slow.sendall(b"Connection: close\r\n\r\n")
        reply = slow.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200"), reply


def healthz_counts_by_process(metrics_dir: Path) -> dict[str, float]:
    """Return the ``/healthz`` 200 count that each process wrote to its own counter file."""
    counts = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "slotq_http_requests_total" and sample.labels == HEALTHZ:
                    counts[path.name] = sample.value
    return counts


def metrics_dir_from_log(api: ApiProcess) -> Path:
    match = re.search(r"Prometheus multiprocess folder of api: (\S+)", api.log())
    assert match, api.log()
    return Path(match.group(1))


def test_counters_add_up_across_workers(api_factory) -> None:
    api = api_factory()
    metrics_dir = metrics_dir_from_log(api)
    before = value(scrape(api), "slotq_http_requests_total", **HEALTHZ)

    spread_healthz_requests(api, quick_requests=6)
    after = scrape(api)

    per_process = healthz_counts_by_process(metrics_dir)
    served = [count for count in per_process.values() if count > 0]
    assert len(served) >= 2, per_process
    assert value(after, "slotq_http_requests_total", **HEALTHZ) == sum(per_process.values())
    assert value(after, "slotq_http_requests_total", **HEALTHZ) - before == 7
    assert value(after, "slotq_http_request_duration_seconds_count", route="/healthz") == sum(per_process.values())


def test_gauges_once_per_scrape(api_factory) -> None:
    api = api_factory()

    response = requests.get(f"{api.url}/metrics", timeout=10)

    names = [line.split("{")[0].split(" ")[0] for line in response.text.splitlines() if not line.startswith("#")]
    assert names.count("slotq_queue_depth") == 1
    assert names.count("slotq_jobs") == 5


def test_temporary_metrics_dir_removed_at_exit(api_factory) -> None:
    api = api_factory()
    metrics_dir = metrics_dir_from_log(api)
    assert metrics_dir.is_dir()
    assert list(metrics_dir.glob("*.db"))

    stop_api(api)

    assert api.process.returncode == 0, api.log()
    assert not metrics_dir.exists()


def test_operator_metrics_dir_cleaned_at_start(api_factory, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    first = api_factory(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    spread_healthz_requests(first, quick_requests=20)
    first_count = value(scrape(first), "slotq_http_requests_total", **HEALTHZ)
    stop_api(first)
    first_files = {path.name for path in metrics_dir.glob("*.db")}
    (metrics_dir / "notes.txt").write_text("kept", encoding="utf-8")

    second = api_factory(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    second_count = value(scrape(second), "slotq_http_requests_total", **HEALTHZ)

    assert first_count >= 21
    assert first_files, "the operator's folder keeps its files after exit"
    assert not first_files & {path.name for path in metrics_dir.glob("*.db")}
    # The second server has served its startup probes only.
    assert 1 <= second_count < first_count
    assert second_count == sum(healthz_counts_by_process(metrics_dir).values())
    assert (metrics_dir / "notes.txt").read_text(encoding="utf-8") == "kept"
