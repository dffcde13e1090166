"""Body size limits over real HTTP, the per-key rate limit and queue-depth back-pressure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import requests
from flask.testing import FlaskClient
from sqlalchemy import func, select

from api.ratelimit import REDIS_KEY_PREFIX, MemoryRateLimiter, RedisRateLimiter
from slotq.store import JobRepository
from slotq.store.models import Batch, Job


def job_count(repository: JobRepository) -> int:
    with repository.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(Job)).scalar_one()


def chunked_json(text_bytes: int) -> Iterator[bytes]:
    """Yield a job request whose prompt has ``text_bytes`` bytes, in 1000-byte chunks (no Content-Length)."""
    yield b'{"prompt": "'
    for start in range(0, text_bytes, 1000):
        yield b"x" * min(1000, text_bytes - start)
    yield b'"}'


def chunked_jsonl(lines: int) -> Iterator[bytes]:
    for index in range(lines):
        yield f'{{"custom_id": "c{index}", "request": {{"prompt": "{"y" * 200}"}}}}\n'.encode()


@pytest.mark.parametrize("path, media_type, body", [
    ("/v1/jobs", "application/json", lambda: chunked_json(10_000)),
    ("/v1/batches", "application/x-ndjson", lambda: chunked_jsonl(60)),
])
def test_chunked_body_over_limit_413(
    make_app, serve, tenant_key, postgres_repository: JobRepository, enqueue, path: str, media_type: str, body
) -> None:
    url = serve(make_app(max_body_bytes=4096, max_batch_body_bytes=4096))
    headers = {"Content-Type": media_type, "Authorization": f"Bearer {tenant_key.key}"}

    response = requests.post(url + path, data=body(), headers=headers, timeout=30)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "4096 bytes" in response.json()["error"]["message"]
    assert job_count(postgres_repository) == 0
    assert enqueue.job_ids == []
    # The server still serves the next request on a new connection.
    assert requests.get(url + "/v1/jobs", headers=headers, timeout=30).status_code == 200


def test_chunked_batch_under_limit_accepted(make_app, serve, tenant_key) -> None:
    url = serve(make_app(max_batch_body_bytes=1_000_000))
    headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {tenant_key.key}"}

    response = requests.post(url + "/v1/batches", data=chunked_jsonl(60), headers=headers, timeout=30)

    assert response.status_code == 202, response.text
    assert response.json()["line_count"] == 60


def test_unauthenticated_upload_rejected_before_body(make_app, serve) -> None:
    url = serve(make_app(max_batch_body_bytes=4096))

    response = requests.post(
        url + "/v1/batches", data=chunked_jsonl(60), headers={"Content-Type": "application/x-ndjson"}, timeout=30
    )

    assert response.status_code == 401


def test_rate_limit_429_with_retry_after(make_app, tenant_key, other_key) -> None:
    app = make_app(rate_limit_per_minute=60, rate_limit_burst=3)
    client = app.test_client()
    acme = {"Authorization": f"Bearer {tenant_key.key}"}

    statuses = [client.get("/v1/jobs", headers=acme).status_code for _ in range(4)]
    limited = client.get("/v1/jobs", headers=acme)
    other = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other_key.key}"})

    assert statuses == [200, 200, 200, 429]
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert "60 per minute" in limited.get_json()["error"]["message"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    assert other.status_code == 200
    assert client.get("/healthz").status_code == 200


def test_rate_limit_off_with_zero(make_app, tenant_key) -> None:
    client = make_app(rate_limit_per_minute=0, rate_limit_burst=1).test_client()

    statuses = {client.get("/v1/jobs", headers={"Authorization": f"Bearer {tenant_key.key}"}).status_code for _ in range(5)}

    assert statuses == {200}


def test_memory_bucket_refills() -> None:
    now = [100.0]
    limiter = MemoryRateLimiter(per_minute=60, burst=2, clock=lambda: now[0])

    assert [limiter.acquire("k") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.acquire("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("k") == 0.0


def test_redis_bucket_shared_between_limiters(redis_url: str) -> None:
    identity = f"test-{uuid.uuid4()}"
    first = RedisRateLimiter(redis_url, per_minute=60, burst=2)
    second = RedisRateLimiter(redis_url, per_minute=60, burst=2)

    try:
        assert first.acquire(identity) == 0.0
        assert second.acquire(identity) == 0.0
        assert 0.9 <= first.acquire(identity) <= 1.0
    finally:
        redis.Redis.from_url(redis_url).delete(REDIS_KEY_PREFIX + identity)


def test_redis_down_lets_requests_pass(closed_port: int, caplog) -> None:
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{closed_port}/0", per_minute=60, burst=1)

    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert sum("Redis unavailable" in record.getMessage() for record in caplog.records) == 1


def test_redis_broker_uses_redis_limiter(make_app, redis_url: str) -> None:
    from api.state import EXTENSION_KEY

    app = make_app(broker_url=redis_url)

    assert isinstance(app.extensions[EXTENSION_KEY].rate_limiter, RedisRateLimiter)


def test_full_queue_429(make_app, tenant_key, postgres_repository: JobRepository) -> None:
    client = make_app(max_queued_jobs=2).test_client()
    headers = {"Authorization": f"Bearer {tenant_key.key}"}

    accepted = [client.post("/v1/jobs", json={"prompt": "x"}, headers=headers).status_code for _ in range(2)]
    refused = client.post("/v1/jobs", json={"prompt": "x"}, headers=headers)

    assert accepted == [202, 202]
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "queue_full"
    assert "2 jobs are queued" in refused.get_json()["error"]["message"]
    assert "limit of 2" in refused.get_json()["error"]["message"]
    assert refused.headers["Retry-After"] == "30"
    assert job_count(postgres_repository) == 2


def test_batch_past_queue_limit_refused_whole(make_app, tenant_key, postgres_repository: JobRepository) -> None:
    client = make_app(max_queued_jobs=5).test_client()
    headers = {"Authorization": f"Bearer {tenant_key.key}"}
    client.post("/v1/jobs", json={"prompt": "x"}, headers=headers)
    body = b"".join(chunked_jsonl(5))

    refused = client.post("/v1/batches", data=body, content_type="application/x-ndjson", headers=headers)
    fits = client.post("/v1/batches", data=b"".join(chunked_jsonl(4)), content_type="application/x-ndjson", headers=headers)

    assert refused.status_code == 429
    assert "1 jobs are queued and this submit adds 5" in refused.get_json()["error"]["message"]
    assert fits.status_code == 202
    assert job_count(postgres_repository) == 5
    with postgres_repository.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Batch)).scalar_one() == 1


def test_cancelled_jobs_free_the_queue(make_app, tenant_key) -> None:
    client: FlaskClient = make_app(max_queued_jobs=1).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant_key.key}"
    first = client.post("/v1/jobs", json={"prompt": "x"})
    assert client.post("/v1/jobs", json={"prompt": "x"}).status_code == 429

    client.delete(first.headers["Location"])

    assert client.post("/v1/jobs", json={"prompt": "x"}).status_code == 202
