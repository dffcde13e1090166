"""``GET /metrics`` through Flask's test client, on the real Postgres store and a SQLite broker.

The HTTP metrics live in this test process for the whole session, so tests compare values
before and after their own requests.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.enqueue import make_celery_enqueue
from slotq.settings import Settings
from slotq.store import STATUSES, JobRepository, make_engine

def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of ``GET /metrics`` as {(name, sorted labels): value}."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def label_values(samples: dict, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample_name, labels in samples if sample_name == name}


def test_metrics_need_no_key(app: Flask) -> None:
    response = app.test_client().get("/metrics")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "slotq_jobs" in response.get_data(as_text=True)


def test_request_counters_move(client: FlaskClient) -> None:
    job_id = client.post("/v1/jobs", json={"prompt": "Hello"}).get_json()["id"]
    before = scrape(client)

    for _ in range(3):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.post("/v1/jobs", json={"prompt": "x", "slot": {"lr": 5}}).status_code == 422
    after = scrape(client)

    def increase(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/jobs/<job_id>"
    assert increase("slotq_http_requests_total", method="GET", route=route, status="200") == 3
    assert increase("slotq_http_requests_total", method="POST", route="/v1/jobs", status="422") == 1
    assert increase("slotq_http_request_duration_seconds_count", route=route) == 3
    assert value(after, "slotq_http_request_duration_seconds_bucket", route=route, le="+Inf") >= 3
    assert value(after, "slotq_http_request_duration_seconds_sum", route=route) > 0


def test_rejected_requests_counted(app: Flask) -> None:
    client = app.test_client()
    labels = {"method": "GET", "route": "/v1/jobs", "status": "401"}
    before = value(scrape(client), "slotq_http_requests_total", **labels)

    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer sq_wrong"}).status_code == 401

    assert value(scrape(client), "slotq_http_requests_total", **labels) - before == 2


def test_metrics_scrape_itself_counted(app: Flask) -> None:
    client = app.test_client()
    labels = {"method": "GET", "route": "/metrics", "status": "200"}

    first = value(scrape(client), "slotq_http_requests_total", **labels)
    second = value(scrape(client), "slotq_http_requests_total", **labels)

    assert second - first == 1


def test_route_labels_bounded_with_random_ids(client: FlaskClient) -> None:
    random_ids = [str(uuid.uuid4()) for _ in range(40)]
    for random_id in random_ids:
        assert client.get(f"/v1/jobs/{random_id}").status_code == 404
        assert client.get(f"/v1/batches/{random_id}/results").status_code == 404
        assert client.get(f"/no/such/path/{random_id}").status_code == 404
        assert client.delete(f"/healthz/{random_id}").status_code == 404

    samples = scrape(client)
    text = "\n".join(f"{name} {labels}" for name, labels in samples)
    routes = label_values(samples, "slotq_http_requests_total", "route")
    assert not any(random_id in text for random_id in random_ids)
    assert "/v1/jobs/<job_id>" in routes
    assert "/v1/batches/<batch_id>/results" in routes
    assert "unmatched" in routes
    assert all(route.startswith("/") or route == "unmatched" for route in routes)
    assert len(routes) <= 20


def test_unknown_methods_share_label(client: FlaskClient) -> None:
    for method in ("BREW", "PROPFIND", "X-" + uuid.uuid4().hex):
        client.open("/v1/jobs", method=method)

    methods = label_values(scrape(client), "slotq_http_requests_total", "method")

    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def test_job_counts_equal_store(client: FlaskClient, postgres_repository: JobRepository) -> None:
    ids = [client.post("/v1/jobs", json={"prompt": f"job {n}"}).get_json()["id"] for n in range(5)]
    assert postgres_repository.claim_job(ids[0], "worker-1") is not None
    assert postgres_repository.fail_job(ids[1], "failed on purpose")
    assert client.delete(f"/v1/jobs/{ids[2]}").status_code == 200

    samples = scrape(client)

    store_totals = dict.fromkeys(STATUSES, 0)
    for entry in postgres_repository.job_counts_by_tenant():
        for status, count in entry.by_status.items():
            store_totals[status] += count
    exported = {status: value(samples, "slotq_jobs", status=status) for status in STATUSES}
    assert exported == store_totals
    assert exported == {"queued": 2, "running": 1, "succeeded": 0, "failed": 1, "cancelled": 1}


def test_metrics_contain_no_tenant_data(client: FlaskClient, api_key: str) -> None:
    job_id = client.post("/v1/jobs", json={"prompt": "秘密の内容", "metadata": {"顧客": "acme"}}).get_json()["id"]
    client.get(f"/v1/jobs/{job_id}")

    body = client.get("/metrics").get_data(as_text=True)

    assert job_id not in body
    assert "acme" not in body
    assert "秘密" not in body
    assert api_key not in body
    assert api_key[:12] not in body


def test_queue_depth_from_broker(client: FlaskClient, postgres_settings: Settings) -> None:
    enqueue = make_celery_enqueue(postgres_settings)
    enqueue.many([str(uuid.uuid4()) for _ in range(3)])
    enqueue.producer_app.close()

    samples = scrape(client)

    assert value(samples, "slotq_queue_depth") == 3


def test_broker_down_counts_scrape_error(
    postgres_settings: Settings, postgres_repository: JobRepository, enqueue, closed_port: int, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=postgres_settings.database_url, broker_url=f"redis://127.0.0.1:{closed_port}/0"
    )
    client = create_app(settings, enqueue=enqueue, repository=postgres_repository).test_client()
    before = value(scrape(client), "slotq_scrape_errors_total", source="broker")

    started = time.monotonic()
    samples = scrape(client)
    elapsed_s = time.monotonic() - started

    assert "slotq_queue_depth" not in names(samples)
    assert value(samples, "slotq_scrape_errors_total", source="broker") - before == 1
    assert value(samples, "slotq_jobs", status="queued") == 0
    assert ("slotq_jobs", (("status", "queued"),)) in samples
    assert elapsed_s < 2.5


def test_database_down_counts_scrape_error(postgres_settings: Settings, enqueue, closed_port: int) -> None:
    engine = make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/test")
    client = create_app(postgres_settings, enqueue=enqueue, repository=JobRepository(engine)).test_client()
    before = value(scrape(client), "slotq_scrape_errors_total", source="database")

    samples = scrape(client)
    engine.dispose()

    assert "slotq_jobs" not in names(samples)
    assert value(samples, "slotq_scrape_errors_total", source="database") - before == 1
    assert "slotq_queue_depth" in names(samples)


@pytest.mark.parametrize("source", ["database", "broker"])
def test_scrape_error_series_exist(client: FlaskClient, source: str) -> None:
    assert ("slotq_scrape_errors_total", (("source", source),)) in scrape(client)
