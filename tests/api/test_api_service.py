"""Health probes, the OpenAPI document and the default Celery enqueue, on real services."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from kombu import Connection

from api.app import create_app
from api.openapi import build_openapi
from slotq.keys import create_key
from slotq.requests import RequestValidationError, parse_job_request
from slotq.settings import Settings
from slotq.store import JobRepository
from slotq.store.migrate import upgrade


def settings_with(base: Settings, **changes: object) -> Settings:
    values = {
        "data_dir": base.data_dir,
        "database_url": base.database_url,
        "broker_url": base.broker_url,
        "ready_timeout_s": 1.0,
    }
    values.update(changes)
    return Settings(**values)


def test_healthz(client: FlaskClient, schema_check) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert schema_check("Health", response.get_json()) == []


def test_readyz_with_redis_broker(
    postgres_settings: Settings, postgres_repository: JobRepository, redis_url: str, schema_check
) -> None:
    settings = settings_with(postgres_settings, broker_url=redis_url)
    client = create_app(settings, enqueue=lambda job_id: None, repository=postgres_repository).test_client()

    response = client.get("/readyz")

    body = response.get_json()
    assert response.status_code == 200, body
    assert schema_check("Ready", body) == []
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"]


def test_readyz_dead_broker_503(
    postgres_settings: Settings, postgres_repository: JobRepository, closed_port: int, schema_check
) -> None:
    settings = settings_with(postgres_settings, broker_url=f"redis://127.0.0.1:{closed_port}/0")
    client = create_app(settings, enqueue=lambda job_id: None, repository=postgres_repository).test_client()

    started = time.monotonic()
    response = client.get("/readyz")
    elapsed_s = time.monotonic() - started

    body = response.get_json()
    assert response.status_code == 503
    assert schema_check("Ready", body) == []
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"]
    assert not body["checks"]["broker"]["ok"]
    assert str(closed_port) in body["checks"]["broker"]["error"]
    assert body["error"]["message"] == "unreachable: broker"
    assert elapsed_s < 5


def test_readyz_dead_database_503(postgres_settings: Settings, closed_port: int) -> None:
    dead_url = f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/nothing"
    settings = settings_with(postgres_settings, database_url=dead_url)
    client = create_app(settings, enqueue=lambda job_id: None).test_client()

    response = client.get("/readyz")

    body = response.get_json()
    assert response.status_code == 503
    assert not body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"]
    assert body["error"]["message"] == "unreachable: database"


def test_dead_database_submit_503(postgres_settings: Settings, closed_port: int) -> None:
    dead_url = f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/nothing"
    settings = settings_with(postgres_settings, database_url=dead_url)
    client = create_app(settings, enqueue=lambda job_id: None).test_client()

    # Checking the key already needs the database, so any key gets the 503.
    response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": "Bearer sq_" + "k" * 43})

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"


def test_default_enqueue_sends_celery_task(
    postgres_settings: Settings, postgres_repository: JobRepository, authorize
) -> None:
    client = authorize(create_app(postgres_settings, repository=postgres_repository).test_client())

    job_id = client.post("/v1/jobs", json={"prompt": "x"}).get_json()["id"]

    with Connection(postgres_settings.broker_url) as connection:
        queue = connection.SimpleQueue(postgres_settings.queue)
        message = queue.get(timeout=5)
        message.ack()
        queue.close()
    assert message.headers["task"] == "slotq.run_job"
    assert message.content_type == "application/json"
    args, kwargs, _ = message.decode()
    assert args == [job_id]
    assert kwargs == {}


def test_default_enqueue_dead_broker_still_202(
    postgres_settings: Settings, postgres_repository: JobRepository, closed_port: int, authorize
) -> None:
    settings = settings_with(postgres_settings, broker_url=f"redis://127.0.0.1:{closed_port}/0")
    client = authorize(create_app(settings, repository=postgres_repository).test_client())

    started = time.monotonic()
    response = client.post("/v1/jobs", json={"prompt": "x"})
    elapsed_s = time.monotonic() - started

    assert response.status_code == 202
    assert postgres_repository.get_job(response.get_json()["id"]).status == "queued"
    assert elapsed_s < 10


def test_openapi_served(client: FlaskClient, postgres_settings: Settings) -> None:
    response = client.get("/openapi.json")

    document = response.get_json()
    assert response.status_code == 200
    assert document == build_openapi(postgres_settings)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/results",
        "/v1/batches/{batch_id}/cancel",
        "/v1/admin/queue",
        "/v1/admin/keys",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_openapi_routes_exist(app) -> None:
    document = build_openapi(app.extensions["slotq"].settings)
    rules = {
        (rule.rule.replace("<job_id>", "{job_id}").replace("<batch_id>", "{batch_id}"), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods
    }

    for path, operations in document["paths"].items():
        for method in operations:
            if method != "parameters":
                assert (path, method.upper()) in rules


def test_openapi_limits_follow_settings(postgres_settings: Settings) -> None:
    settings = settings_with(postgres_settings, max_steps=7, max_lr=0.3, max_page_size=9, default_page_size=3)

    schemas = build_openapi(settings)["components"]["schemas"]

    assert schemas["SlotParams"]["properties"]["steps"]["maximum"] == 7
    assert schemas["SlotParams"]["properties"]["lr"]["maximum"] == 0.3


# Bodies whose validity the JSON schema can express; the validator must agree with it.
AGREEMENT_BODIES = [
    {"prompt": "x"},
    {"prompt": "x", "slot": {"steps": 20, "lr": 1.0}},
    {"prompt": "x", "slot": {"steps": 21}},
    {"prompt": "x", "slot": {"lr": 0.00009}},
    {"prompt": "x", "generation": {"top_p": 0}},
    {"prompt": "x", "generation": {"top_p": 1, "temperature": 0, "seed": None}},
    {"prompt": "x", "generation": {"max_new_tokens": 513}},
    {"prompt": "x", "generation": {"stop": ["a", "b", "c", "d", "e"]}},
    {"prompt": "x", "generation": {"stop": [""]}},
    {"prompt": "x", "generation": {"seed": -1}},
    {"prompt": "x", "extra": 1},
    {"prompt": "x", "slot": {"extra": 1}},
    {"prompt": "x", "slot": {"overfit_policy": "fallback"}},
    {"prompt": "x", "slot": {"overfit_policy": "drop"}},
    {"prompt": "x", "slot": {"overfit_policy": None}},
    {"prompt": "", "metadata": {}},
    {"prompt": "x" * 20001},
    {"messages": [{"role": "user", "content": "x"}]},
    {"messages": []},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
    {"slot": {"steps": 1}},
    {"prompt": "x", "metadata": []},
    {"prompt": 5},
]


@pytest.mark.parametrize("body", AGREEMENT_BODIES)
def test_openapi_request_schema_agrees(body: dict, postgres_settings: Settings, schema_check) -> None:
    try:
        parse_job_request(body, postgres_settings)
        accepted = True
    except RequestValidationError:
        accepted = False

    assert (schema_check("JobRequest", body) == []) == accepted


def test_embedded_sqlite_app(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.database_url)
    key = create_key("embedded", database_url=settings.database_url).key
    sent: list[str] = []
    client = create_app(settings, enqueue=sent.append).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"

    job_id = client.post("/v1/jobs", json={"prompt": "こんにちは"}).get_json()["id"]

    assert settings.embedded
    assert sent == [job_id]
    assert client.get(f"/v1/jobs/{job_id}").get_json()["request"]["prompt"] == "こんにちは"
    assert client.get("/readyz").status_code == 200
