"""Idempotency-Key on submits: replays, conflicts, tenant scope, expiry and racing requests."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import requests
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from slotq.store import JobRepository
from slotq.store.models import Batch, IdempotencyRecord, Job, utcnow

BATCH = b'{"custom_id": "a", "request": {"prompt": "x"}}\n{"custom_id": "b", "request": {"prompt": "y"}}\n'


def count(repository: JobRepository, model) -> int:
    with repository.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar_one()


def post_job(client: FlaskClient, body: dict, key: str | None = "order-1", **kwargs):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", json=body, headers=headers, **kwargs)


def test_same_key_same_body_replays(client: FlaskClient, postgres_repository: JobRepository, enqueue) -> None:
    first = post_job(client, {"prompt": "こんにちは", "slot": {"steps": 2}})
    # Same JSON with other key order and spacing: the canonical form is equal.
    raw = json.dumps({"slot": {"steps": 2}, "prompt": "こんにちは"}, ensure_ascii=False, indent=2).encode("utf-8")
    second = client.post("/v1/jobs", data=raw, content_type="application/json", headers={"Idempotency-Key": "order-1"})

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Location"] == first.headers["Location"]
    assert count(postgres_repository, Job) == 1
    assert enqueue.job_ids == [first.get_json()["id"]]


def test_replay_keeps_original_body_after_cancel(client: FlaskClient) -> None:
    first = post_job(client, {"prompt": "x"})
    client.delete(first.headers["Location"])

    second = post_job(client, {"prompt": "x"})

    assert second.get_json() == first.get_json()
    assert second.get_json()["status"] == "queued"


def test_same_key_other_body_409(client: FlaskClient, postgres_repository: JobRepository) -> None:
    post_job(client, {"prompt": "x"})

    response = post_job(client, {"prompt": "y"})

    error = response.get_json()["error"]
    assert response.status_code == 409
    assert error["code"] == "idempotency_key_reused"
    assert "order-1" in error["message"]
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert count(postgres_repository, Job) == 1


def test_keys_scoped_per_tenant(client_for, tenant_key, other_key, postgres_repository: JobRepository) -> None:
    acme = post_job(client_for(tenant_key), {"prompt": "x"})
    globex = post_job(client_for(other_key), {"prompt": "x"})

    assert acme.get_json()["id"] != globex.get_json()["id"]
    assert "Idempotent-Replayed" not in globex.headers
    assert count(postgres_repository, Job) == 2


def test_expired_key_creates_new_job(client: FlaskClient, postgres_repository: JobRepository) -> None:
    first = post_job(client, {"prompt": "x"})
    with postgres_repository.engine.begin() as connection:
        connection.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))

    second = post_job(client, {"prompt": "x"})

    assert second.status_code == 202
    assert second.get_json()["id"] != first.get_json()["id"]
    assert "Idempotent-Replayed" not in second.headers
    assert count(postgres_repository, IdempotencyRecord) == 1


def test_key_ttl_from_settings(make_app, tenant_key, postgres_repository: JobRepository) -> None:
    client = make_app(idempotency_ttl_s=3600).test_client()
    client.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": f"Bearer {tenant_key.key}", "Idempotency-Key": "k"})

    with postgres_repository.engine.connect() as connection:
        created, expires = connection.execute(select(IdempotencyRecord.created_at, IdempotencyRecord.expires_at)).one()
    assert (expires - created) == timedelta(hours=1)


def test_invalid_request_stores_no_key(client: FlaskClient, postgres_repository: JobRepository) -> None:
    invalid = post_job(client, {"prompt": "x", "slot": {"lr": 50}})
    valid = post_job(client, {"prompt": "x"})

    assert invalid.status_code == 422
    assert valid.status_code == 202
    assert "Idempotent-Replayed" not in valid.headers


def test_malformed_key_422(client: FlaskClient, postgres_repository: JobRepository) -> None:
    for key in ("", "x" * 256, "with space", "日本"):
        response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
        assert response.status_code == 422, key
        assert response.get_json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert count(postgres_repository, Job) == 0


def test_batch_replay_and_conflict(client: FlaskClient, postgres_repository: JobRepository) -> None:
    headers = {"Idempotency-Key": "nightly-2025-12-06"}
    first = client.post("/v1/batches", data=BATCH, content_type="application/x-ndjson", headers=headers)
    second = client.post("/v1/batches", data=BATCH, content_type="application/x-ndjson", headers=headers)
    other = client.post("/v1/batches", data=BATCH + b'{"custom_id": "c", "request": {"prompt": "z"}}\n', content_type="application/x-ndjson", headers=headers)
    other_query = client.post("/v1/batches?skip_invalid=true", data=BATCH, content_type="application/x-ndjson", headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    assert other_query.status_code == 409
    assert count(postgres_repository, Batch) == 1
    assert count(postgres_repository, Job) == 2


def test_batch_json_form_replays(client: FlaskClient) -> None:
    body = json.dumps({"metadata": {"x": 1}, "requests": [{"custom_id": "a", "request": {"prompt": "x"}}]}).encode()
    headers = {"Idempotency-Key": "json-form"}

    first = client.post("/v1/batches", data=body, content_type="application/json", headers=headers)
    second = client.post("/v1/batches", data=body, content_type="application/json", headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json()["id"] == first.get_json()["id"]


def test_racing_submits_store_one_job(app, serve, tenant_key, postgres_repository: JobRepository) -> None:
    url = serve(app) + "/v1/jobs"
    headers = {"Authorization": f"Bearer {tenant_key.key}", "Idempotency-Key": "race"}
    start = threading.Barrier(8)
    responses = []

    def send() -> None:
        start.wait(timeout=10)
        responses.append(requests.post(url, json={"prompt": "race"}, headers=headers, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert [response.status_code for response in responses] == [202] * 8
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(response.headers.get("Idempotent-Replayed") == "true" for response in responses) == 7
    assert count(postgres_repository, Job) == 1
