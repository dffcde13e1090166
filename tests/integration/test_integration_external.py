"""The service on Postgres and Redis: `slotq db upgrade`, `slotq api` under gunicorn over HTTP and
a real `slotq worker` process running the bundled model."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from integration_support import (
    Started,
    assert_succeeded_job,
    auth,
    create_api_key,
    descendants,
    free_port,
    job_row,
    kill_leftovers,
    running_api,
    service_environment,
    start_slotq,
    stop,
    submit,
    wait_final,
    wait_ready,
)

STEPS = 3
LR = 0.01
MAX_NEW_TOKENS = 6
ENGLISH_PROMPT = "Name one primary colour."
JAPANESE_MESSAGES = [
    {"role": "system", "content": "あなたは簡潔に答えるアシスタントです。"},
    {"role": "user", "content": "富士山の高さは何メートルですか？"},
]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("external-logs")


@pytest.fixture(scope="module")
def service_env(integration_database_url: str, integration_broker: dict, model_cache_dir: Path, log_dir: Path) -> dict[str, str]:
    """Environment of every process of this module, migrated database included."""
    return service_environment(integration_database_url, integration_broker, model_cache_dir, log_dir)


@pytest.fixture(scope="module")
def api_key(service_env: dict[str, str]) -> str:
    """Key of the tenant ``integration``, made with `slotq keys create`."""
    return create_api_key(service_env, "integration")


@pytest.fixture(scope="module")
def api(service_env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, Started]]:
    """`slotq api` on a free port; yields its base URL."""
    with running_api(service_env, log_dir) as running:
        yield running


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str], log_dir: Path) -> Iterator[Started]:
    """One `slotq worker` process (prefork pool, concurrency 1) on the module's queue."""
    started = start_slotq("worker", ["worker"], service_env, log_dir)
    try:
        yield started
    finally:
        stop(started)


@pytest.fixture
def idle_api(service_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """`slotq api` sending to a queue that no worker consumes, so its jobs stay queued."""
    port = free_port()
    env = {**service_env, "SLOTQ_API_PORT": str(port), "SLOTQ_QUEUE": service_env["SLOTQ_QUEUE"] + "-idle"}
    started = start_slotq("idle-api", ["api"], env, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [started])
        yield base_url
    finally:
        stop(started)


def test_invalid_requests_get_422(api: tuple[str, Started], api_key: str) -> None:
    base_url, _ = api
    cases = [
        ({"prompt": "hi", "slot": {"steps": -1}}, "slot.steps"),
        ({"prompt": "hi", "slot": {"lr": 0}}, "slot.lr"),
        ({"prompt": "hi", "colour": "blue"}, "colour"),
        ({"prompt": "   "}, "prompt"),
        ({"messages": [{"role": "robot", "content": "こんにちは"}]}, "messages.0.role"),
        ({"prompt": "hi", "generation": {"max_new_tokens": 0}}, "generation.max_new_tokens"),
    ]
    for body, field in cases:
        response = requests.post(f"{base_url}/v1/jobs", json=body, headers=auth(api_key), timeout=30)

        assert response.status_code == 422, (body, response.text)
        assert "Traceback" not in response.text
        fields = [error["field"] for error in response.json()["error"]["details"]]
        assert field in fields, (body, response.json())


def test_cancel_queued_job(idle_api: str, api_key: str, integration_database_url: str) -> None:
    job_id = submit(idle_api, {"prompt": "Count to three.", "slot": {"steps": 1, "lr": LR}}, api_key)

    response = requests.delete(f"{idle_api}/v1/jobs/{job_id}", headers=auth(api_key), timeout=30)
    again = requests.delete(f"{idle_api}/v1/jobs/{job_id}", headers=auth(api_key), timeout=30)
    job = requests.get(f"{idle_api}/v1/jobs/{job_id}", headers=auth(api_key), timeout=30).json()

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert again.status_code == 409, again.text
    assert job["status"] == "cancelled"
    assert job["cancelled_at"] is not None
    assert job["started_at"] is None
    assert job["attempts"] == 0
    assert job["result"] is None
    assert job_row(integration_database_url, job_id)["status"] == "cancelled"


def test_english_and_japanese_jobs_succeed(api: tuple[str, Started], worker: Started, api_key: str,
                                           integration_database_url: str) -> None:
    base_url, api_process = api
    generation = {"max_new_tokens": MAX_NEW_TOKENS}
    english_id = submit(base_url, {"prompt": ENGLISH_PROMPT, "slot": {"steps": STEPS, "lr": LR}, "generation": generation},
                        api_key)
    japanese_id = submit(base_url, {
        "messages": JAPANESE_MESSAGES,
        "slot": {"steps": STEPS, "lr": LR},
        "generation": generation,
        "metadata": {"顧客": "テスト"},
    }, api_key)

    english = wait_final(base_url, english_id, api_key, [api_process, worker])
    japanese = wait_final(base_url, japanese_id, api_key, [api_process, worker])

    assert_succeeded_job(english, job_row(integration_database_url, english_id), STEPS, MAX_NEW_TOKENS)
    japanese_row = job_row(integration_database_url, japanese_id)
    assert_succeeded_job(japanese, japanese_row, STEPS, MAX_NEW_TOKENS)
    assert english["request"]["prompt"] == ENGLISH_PROMPT
    assert japanese["request"]["messages"] == JAPANESE_MESSAGES
    assert japanese["request"]["metadata"] == {"顧客": "テスト"}
    assert "富士山の高さ" in japanese_row["request_text"]
    assert "\\u" not in japanese_row["request_text"]


def test_prefork_parent_never_loads_the_model(api: tuple[str, Started], worker: Started, api_key: str) -> None:
    # CUDA state does not survive a fork, so the parent of the pool must never load the model.
    # On this CPU machine that shows as the parent lacking the pool child's copy of the weights.
    base_url, api_process = api
    job_id = submit(base_url, {"prompt": ENGLISH_PROMPT, "generation": {"max_new_tokens": 2}}, api_key)
    wait_final(base_url, job_id, api_key, [api_process, worker])
    parent = psutil.Process(worker.process.pid)
    children = parent.children()

    weights_bytes = 4 * 134_000_000  # float32 weights of the bundled 135M-parameter model, rounded down
    assert len(children) == 1
    assert children[0].memory_info().rss - parent.memory_info().rss > weights_bytes // 2


def test_finished_jobs_listed_per_tenant(api: tuple[str, Started], worker: Started, api_key: str,
                                         service_env: dict[str, str]) -> None:
    base_url, api_process = api
    other_key = create_api_key(service_env, "other-tenant")
    job_id = submit(base_url, {"prompt": "Say yes.", "slot": {"steps": 0, "lr": LR}, "generation": {"max_new_tokens": 2}},
                    api_key)
    job = wait_final(base_url, job_id, api_key, [api_process, worker])

    listed = requests.get(f"{base_url}/v1/jobs", params={"status": "succeeded", "limit": 50},
                          headers=auth(api_key), timeout=30).json()
    other_listed = requests.get(f"{base_url}/v1/jobs", headers=auth(other_key), timeout=30).json()
    other_read = requests.get(f"{base_url}/v1/jobs/{job_id}", headers=auth(other_key), timeout=30)
    anonymous = requests.get(f"{base_url}/v1/jobs/{job_id}", timeout=30)

    assert job["status"] == "succeeded", job
    assert len(job["result"]["loss_trace"]) == 1
    assert job_id in [item["id"] for item in listed["jobs"]]
    assert job_id not in [item["id"] for item in other_listed["jobs"]]
    assert other_read.status_code == 404
    assert anonymous.status_code == 401


def test_serve_uses_postgres_and_redis_when_configured(service_env: dict[str, str], log_dir: Path, api_key: str,
                                                       integration_database_url: str) -> None:
    port = free_port()
    # A queue of its own, so the module's worker cannot take this job.
    env = {**service_env, "SLOTQ_API_PORT": str(port), "SLOTQ_QUEUE": service_env["SLOTQ_QUEUE"] + "-serve"}
    serve = start_slotq("serve-external", ["serve"], env, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    children = []
    try:
        wait_ready(base_url, [serve])
        children = descendants(serve)
        job_id = submit(base_url, {"prompt": "Say hi.", "slot": {"steps": 1, "lr": LR}, "generation": {"max_new_tokens": 2}},
                        api_key)
        job = wait_final(base_url, job_id, api_key, [serve])
        status = stop(serve, signal.SIGTERM)
    finally:
        stop(serve)
        leftovers = kill_leftovers(children)

    log = serve.log_tail(200)
    assert job["status"] == "succeeded", job
    assert job_row(integration_database_url, job_id)["status"] == "succeeded"
    assert "external mode" in log
    assert not (log_dir / "data" / "slotq.db").exists()
    assert status == 0, log
    assert leftovers == [], log
