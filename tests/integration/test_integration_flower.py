"""`slotq flower` on the local Redis broker: a real worker runs a job, Flower finds it by its job id,
and every page and API endpoint rejects requests without valid basic authentication."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery
from integration_support import (
    Started,
    create_api_key,
    free_port,
    running_api,
    service_environment,
    start_slotq,
    stop,
    submit,
    wait_final,
)

pytestmark = pytest.mark.integration

RUN_JOB_TASK = "slotq.run_job"
#: Small, so that the history test can overflow it with a few cheap messages.
MAX_TASKS = 20
#: Seconds Flower may take to receive an event that a worker or producer sent.
EVENT_TIMEOUT_S = 60.0
#: Seconds a started worker may take until Flower has its first heartbeat (worker start included).
WORKER_ONLINE_TIMEOUT_S = 180.0
OPERATOR = ("ops", secrets.token_urlsafe(12))
VIEWER = ("viewer", secrets.token_urlsafe(12))
PROTECTED_PATHS = ["/", "/workers", "/tasks", "/api/tasks", "/api/workers", "/api/task/types", "/api/queues/length"]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flower-logs")


@pytest.fixture(scope="module")
def service_env(integration_database_url: str, integration_broker: dict, model_cache_dir: Path, log_dir: Path) -> dict[str, str]:
    """Environment of every process of this module, migrated database included."""
    return service_environment(
        integration_database_url, integration_broker, model_cache_dir, log_dir,
        # Spaces around the comma are allowed and removed.
        SLOTQ_FLOWER_BASIC_AUTH=f"{OPERATOR[0]}:{OPERATOR[1]}, {VIEWER[0]}:{VIEWER[1]}",
        SLOTQ_FLOWER_HOST="127.0.0.1",
        SLOTQ_FLOWER_MAX_TASKS=str(MAX_TASKS),
    )


@pytest.fixture(scope="module")
def worker_hostname() -> str:
    """Celery node name of the module's worker, so Flower's metrics and task records can be matched."""
    return f"flower-it-{uuid.uuid4().hex[:8]}@localhost"


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str], log_dir: Path, worker_hostname: str) -> Iterator[Started]:
    """One `slotq worker` process (prefork pool, concurrency 1) on the module's queue."""
    started = start_slotq("worker", ["worker", "--hostname", worker_hostname], service_env, log_dir)
    try:
        yield started
    finally:
        stop(started)


@pytest.fixture(scope="module")
def flower(service_env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, Started]]:
    """`slotq flower` on a free port; yields its base URL once ``/healthcheck`` returns 200."""
    port = free_port()
    # Flower opens its API to anonymous clients with this variable only when no authentication is
    # configured, so the rejection tests below must pass with it set.
    env = {**service_env, "FLOWER_UNAUTHENTICATED_API": "true"}
    started = start_slotq("flower", ["flower", "--port", str(port)], env, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _returns_200(f"{base_url}/healthcheck"), 60.0, "Flower's /healthcheck answers", [started])
        yield base_url, started
    finally:
        stop(started)


@pytest.fixture(scope="module")
def api(service_env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, Started]]:
    """`slotq api` on a free port; yields its base URL."""
    with running_api(service_env, log_dir) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(service_env: dict[str, str]) -> str:
    return create_api_key(service_env, "flower-integration")


@pytest.fixture(scope="module")
def worker_online(flower: tuple[str, Started], worker: Started, worker_hostname: str) -> None:
    """Wait until Flower received an event of the module's worker.

    Flower keeps only events that arrive while it runs, so a job submitted before its event
    receiver is connected would be missing from its history.
    """
    base_url, flower_process = flower
    online = re.compile(rf'^flower_worker_online\{{worker="{re.escape(worker_hostname)}"\}} 1\.0$', re.MULTILINE)

    def seen() -> bool:
        # Flower 2.2 serves /metrics without authentication.
        return bool(online.search(requests.get(f"{base_url}/metrics", timeout=5).text))

    wait_until(seen, WORKER_ONLINE_TIMEOUT_S, f"Flower reports worker {worker_hostname} online", [flower_process, worker])


def wait_until(condition, timeout_s: float, description: str, started: list[Started]) -> None:
    """Poll ``condition`` until it is true; fail with the logs when a process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for item in started:
            if item.process.poll() is not None:
                raise AssertionError(f"{item.name} exited with status {item.process.returncode}:\n{item.log_tail()}")
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    logs = "\n".join(f"--- {item.name}\n{item.log_tail()}" for item in started)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting until {description}\n{logs}")


def find_tasks(base_url: str, search: str, taskname: str | None = None) -> dict[str, dict]:
    """Return Flower's task records that match ``search``, keyed by task id, as the operator."""
    params = {"search": search, "limit": 1000}
    if taskname:
        params["taskname"] = taskname
    response = requests.get(f"{base_url}/api/tasks", params=params, auth=OPERATOR, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _returns_200(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


def test_flower_finds_finished_job_by_id(flower: tuple[str, Started], worker_online: None, worker: Started,
                                         worker_hostname: str, api: tuple[str, Started], api_key: str) -> None:
    flower_url, flower_process = flower
    api_url, api_process = api
    job_id = submit(api_url, {"prompt": "Say yes.", "slot": {"steps": 1, "lr": 0.01}, "generation": {"max_new_tokens": 2}},
                    api_key)
    job = wait_final(api_url, job_id, api_key, [api_process, worker, flower_process])
    assert job["status"] == "succeeded", job

    def succeeded_in_flower() -> bool:
        found = find_tasks(flower_url, f"args:{job_id}", taskname=RUN_JOB_TASK)
        return any(task["state"] == "SUCCESS" for task in found.values())

    wait_until(succeeded_in_flower, EVENT_TIMEOUT_S, f"Flower lists job {job_id} as SUCCESS", [flower_process, worker])
    found = find_tasks(flower_url, f"args:{job_id}", taskname=RUN_JOB_TASK)
    assert len(found) == 1, found
    task_id, task = next(iter(found.items()))
    assert task["name"] == RUN_JOB_TASK
    assert task["state"] == "SUCCESS"
    assert job_id in task["args"]
    assert task["worker"] == worker_hostname

    info = requests.get(f"{flower_url}/api/task/info/{task_id}", auth=VIEWER, timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["state"] == "SUCCESS"
    assert job_id in info.json()["args"]
    page = requests.get(f"{flower_url}/task/{task_id}", auth=OPERATOR, timeout=10)
    assert page.status_code == 200
    assert job_id in page.text

    # The open /metrics endpoint names workers and task types but never task arguments.
    assert job_id not in requests.get(f"{flower_url}/metrics", timeout=10).text

    for path in (f"/api/task/info/{task_id}", f"/task/{task_id}"):
        anonymous = requests.get(f"{flower_url}{path}", timeout=10)
        assert anonymous.status_code == 401, path
        assert job_id not in anonymous.text


def test_flower_rejects_missing_or_wrong_credentials(flower: tuple[str, Started]) -> None:
    base_url, _ = flower
    wrong_credentials = [
        (OPERATOR[0], "wrong-password"),
        ("intruder", OPERATOR[1]),
        (OPERATOR[0], VIEWER[1]),
    ]
    for path in PROTECTED_PATHS:
        anonymous = requests.get(f"{base_url}{path}", timeout=10)
        assert anonymous.status_code == 401, path
        if not path.startswith("/api/"):
            # Flower's API handlers answer 401 without a challenge; its pages ask for basic auth.
            assert anonymous.headers.get("WWW-Authenticate", "").startswith("Basic"), path

        bearer = requests.get(f"{base_url}{path}", headers={"Authorization": "Bearer " + OPERATOR[1]}, timeout=10)
        assert bearer.status_code == 401, path

        for credentials in wrong_credentials:
            response = requests.get(f"{base_url}{path}", auth=credentials, timeout=10)
            assert response.status_code == 401, (path, credentials[0])

        for credentials in (OPERATOR, VIEWER):
            response = requests.get(f"{base_url}{path}", auth=credentials, timeout=10)
            assert response.status_code == 200, (path, credentials[0], response.text[:300])


def test_flower_rejects_control_without_credentials(flower: tuple[str, Started], worker_hostname: str) -> None:
    base_url, _ = flower
    requests_to_check = [
        ("POST", f"/api/worker/shutdown/{worker_hostname}"),
        ("POST", f"/api/task/revoke/{uuid.uuid4()}"),
        ("POST", f"/api/task/send-task/{RUN_JOB_TASK}"),
    ]
    for method, path in requests_to_check:
        response = requests.request(method, f"{base_url}{path}", json={"args": ["not-a-job"]}, timeout=10)
        assert response.status_code == 401, (method, path, response.text[:300])


def test_flower_history_keeps_max_tasks(flower: tuple[str, Started], worker_online: None,
                                        integration_broker: dict) -> None:
    base_url, flower_process = flower
    run = uuid.uuid4().hex[:10]
    probe_ids = [f"history-{run}-{index:03d}" for index in range(MAX_TASKS + 10)]
    producer = Celery("flower-history-probe", broker=integration_broker["url"], set_as_current=False)
    producer.conf.update(task_serializer="json", accept_content=["json"], task_send_sent_event=True)
    # No worker consumes this queue: each message only gives Flower one task-sent event.
    unconsumed_queue = integration_broker["queue"] + "-flower-history"
    try:
        for probe_id in probe_ids:
            producer.send_task("slotq.history_probe", args=[probe_id], queue=unconsumed_queue)
    finally:
        producer.close()

    wait_until(lambda: bool(find_tasks(base_url, f"args:{probe_ids[-1]}")), EVENT_TIMEOUT_S,
               "Flower lists the last history probe", [flower_process])
    listed = requests.get(f"{base_url}/api/tasks", params={"limit": 10 * MAX_TASKS}, auth=OPERATOR, timeout=10)
    assert listed.status_code == 200, listed.text
    kept_tasks = listed.json()
    kept_args = " ".join(task["args"] or "" for task in kept_tasks.values())

    assert len(kept_tasks) <= MAX_TASKS
    assert probe_ids[0] not in kept_args
    assert probe_ids[-1] in kept_args
