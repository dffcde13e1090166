"""The API under gunicorn over real HTTP, on the session's Postgres database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kombu import Connection

from slotq.keys import create_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 15
JAPANESE = "吾輩は猫である。名前はまだ無い。"


@pytest.fixture
def gunicorn_server(postgres_url: str, postgres_repository, tmp_path: Path, closed_port: int) -> Iterator[dict]:
    """Start ``gunicorn 'api.app:create_app()'`` with two workers; yield its base URL, settings and key header."""
    broker_url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    env = {
        **os.environ,
        "SLOTQ_DATA_DIR": str(tmp_path),
        "SLOTQ_DATABASE_URL": postgres_url,
        "SLOTQ_BROKER_URL": broker_url,
        "SLOTQ_MAX_BODY_BYTES": "4096",
    }
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{closed_port}",
                "--graceful-timeout",
                "5",
                "api.app:create_app()",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{closed_port}"

    try:
        _wait_until_healthy(base_url, process, log_path)
        key = create_key("acme", repository=postgres_repository).key
        yield {"url": base_url, "broker_url": broker_url, "log": log_path, "auth": {"Authorization": f"Bearer {key}"}}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)


def _wait_until_healthy(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    pytest.fail(f"gunicorn not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


def test_submit_and_read_over_http(gunicorn_server: dict) -> None:
    base_url = gunicorn_server["url"]
    raw = json.dumps({"prompt": JAPANESE, "metadata": {"作者": "夏目漱石"}}, ensure_ascii=False).encode("utf-8")

    auth = gunicorn_server["auth"]
    submitted = requests.post(
        f"{base_url}/v1/jobs", data=raw, headers={"Content-Type": "application/json", **auth}, timeout=10
    )
    job_url = base_url + submitted.headers["Location"]
    fetched = requests.get(job_url, headers=auth, timeout=10)

    assert submitted.status_code == 202
    assert fetched.status_code == 200
    assert fetched.headers["Content-Type"] == "application/json"
    assert JAPANESE.encode("utf-8") in fetched.content
    assert "夏目漱石".encode("utf-8") in fetched.content
    assert fetched.json()["request"]["prompt"] == JAPANESE
    assert fetched.json()["status"] == "queued"


def test_task_reaches_broker_over_http(gunicorn_server: dict) -> None:
    submitted = requests.post(
        f"{gunicorn_server['url']}/v1/jobs", json={"prompt": "x"}, headers=gunicorn_server["auth"], timeout=10
    )

    with Connection(gunicorn_server["broker_url"]) as connection:
        queue = connection.SimpleQueue("slotq")
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers["task"] == "slotq.run_job"
    assert message.decode()[0] == [submitted.json()["id"]]


def test_ready_and_errors_over_http(gunicorn_server: dict) -> None:
    base_url = gunicorn_server["url"]

    auth = gunicorn_server["auth"]

    ready = requests.get(f"{base_url}/readyz", timeout=10)
    missing = requests.get(f"{base_url}/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth, timeout=10)
    invalid = requests.post(f"{base_url}/v1/jobs", json={"prompt": "x", "slot": {"lr": 5}}, headers=auth, timeout=10)
    anonymous = requests.get(f"{base_url}/v1/jobs", timeout=10)

    assert ready.status_code == 200, ready.text
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "job_not_found"
    assert invalid.status_code == 422
    assert invalid.json()["error"]["details"][0]["field"] == "slot.lr"
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def test_chunked_body_over_limit_413(gunicorn_server: dict) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = requests.post(
        f"{gunicorn_server['url']}/v1/jobs",
        data=chunks(),
        headers={"Content-Type": "application/json", **gunicorn_server["auth"]},
        timeout=10,
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_at_limit_accepted(gunicorn_server: dict) -> None:
    # 12 bytes of '{"prompt": "' and 2 of '"}' around the text: 4096 bytes in all.
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        yield b"x" * 4082
        yield b'"}'

    response = requests.post(
        f"{gunicorn_server['url']}/v1/jobs",
        data=chunks(),
        headers={"Content-Type": "application/json", **gunicorn_server["auth"]},
        timeout=10,
    )

    assert response.status_code == 202, response.text
