"""The sweeper against the real Postgres store, the real local Redis broker and real Celery sends.

Each test uses a queue name of its own, so the broker's lost messages are simulated by deleting
or popping that queue's Redis list, which no other test reads.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from api.enqueue import make_celery_enqueue, send_recorded
from slotq.broker import queue_depth
from slotq.settings import Settings
from slotq.store import JobRepository
from slotq.metrics import serve_metrics
from slotq.sweeper import Sweeper, SweeperMetrics
from store_support import FakeClock, make_request

MODEL = "test-model"


@pytest.fixture
def broker(redis_url: str) -> Iterator[tuple[str, str, redis.Redis]]:
    """The local Redis URL, a private queue name on it and a client; the queue is deleted after."""
    queue = f"slotq-sweeper-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    yield redis_url, queue, client
    for key in client.scan_iter(match=f"*{queue}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(postgres_repository: JobRepository, clock: FakeClock) -> JobRepository:
    return JobRepository(postgres_repository.engine, clock=clock)


def make_sweeper(store: JobRepository, settings: Settings, broker_url: str, queue: str) -> Sweeper:
    settings = replace(settings, broker_url=broker_url, queue=queue, enqueue_grace_s=5.0, max_attempts=2)
    return Sweeper(store, make_celery_enqueue(settings), lambda: queue_depth(broker_url, queue), settings)


def queued_job_ids(client: redis.Redis, queue: str) -> list[str]:
    """Job ids of the messages waiting in ``queue``, oldest first."""
    messages = client.lrange(queue, 0, -1)
    ids = []
    for raw in reversed(messages):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(body[0][0])
    return ids


def sent_counter(sweeper: Sweeper, reason: str) -> float:
    return sweeper.metrics.registry.get_sample_value("slotq_sweeper_requeued_total", {"reason": reason}) or 0.0


def sent_jobs(store: JobRepository, sweeper: Sweeper, clock: FakeClock, count: int) -> list:
    """Store ``count`` queued jobs and send each one, a second of the clock apart."""
    jobs = [store.create_job(make_request(f"p{index}"), MODEL) for index in range(count)]
    for job in jobs:
        clock.advance(seconds=1)
        send_recorded(sweeper.enqueue, store, [job.id])
    return jobs


def test_unsent_job_sent_after_grace(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    job = store.create_job(make_request(), MODEL)

    clock.advance(seconds=4)
    early = sweeper.sweep_once()
    clock.advance(seconds=2)
    report = sweeper.sweep_once()
    again = sweeper.sweep_once()

    assert not early.changed
    assert report.sent["never_sent"] == [job.id]
    assert not again.changed
    assert queued_job_ids(client, queue) == [job.id]
    assert store.get_job(job.id).enqueued_at == clock.now
    assert sent_counter(sweeper, "never_sent") == 1


def test_lost_messages_sent_again(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    jobs = sent_jobs(store, sweeper, clock, 3)
    client.delete(queue)
    clock.advance(seconds=6)

    first = sweeper.sweep_once()
    report = sweeper.sweep_once()
    again = sweeper.sweep_once()

    assert not first.changed
    assert report.sent["message_lost"] == [job.id for job in jobs]
    assert queued_job_ids(client, queue) == [job.id for job in jobs]
    assert not again.changed


def test_oldest_lost_message_sent_again(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    jobs = sent_jobs(store, sweeper, clock, 3)
    client.rpop(queue)  # kombu pushes on the left and workers pop on the right: the oldest
    clock.advance(seconds=6)

    sweeper.sweep_once()
    report = sweeper.sweep_once()

    assert report.sent["message_lost"] == [jobs[0].id]
    assert sorted(queued_job_ids(client, queue)) == sorted(job.id for job in jobs)


def test_taken_unclaimed_message_not_resent(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    job = store.create_job(make_request(), MODEL)
    send_recorded(sweeper.enqueue, store, [job.id])
    client.rpop(queue)  # a worker took the message
    clock.advance(seconds=6)

    first = sweeper.sweep_once()
    store.claim_job(job.id, "w1")  # and claimed the job before the next pass
    second = sweeper.sweep_once()

    assert not first.changed
    assert not second.changed
    assert client.llen(queue) == 0


def test_recent_sends_not_taken_for_lost(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    job = store.create_job(make_request(), MODEL)
    send_recorded(sweeper.enqueue, store, [job.id])
    client.delete(queue)
    clock.advance(seconds=4)

    assert not sweeper.sweep_once().changed
    assert client.llen(queue) == 0


def test_lost_worker_job_resent_then_failed(store, clock, postgres_settings, broker) -> None:
    url, queue, client = broker
    sweeper = make_sweeper(store, postgres_settings, url, queue)
    job = store.create_job(make_request(), MODEL)
    send_recorded(sweeper.enqueue, store, [job.id])
    client.delete(queue)
    store.claim_job(job.id, "lost-worker", lease_s=10)

    clock.advance(seconds=11)
    first = sweeper.sweep_once()
    store.claim_job(job.id, "lost-worker", lease_s=10)
    clock.advance(seconds=11)
    second = sweeper.sweep_once()

    assert first.sent["lease_expired"] == [job.id]
    assert queued_job_ids(client, queue) == [job.id]
    assert second.failed == [job.id]
    assert not any(second.sent.values())
    stored = store.get_job(job.id)
    assert stored.status == "failed"
    assert stored.attempts == 2
    assert sweeper.metrics.registry.get_sample_value("slotq_sweeper_failed_total") == 1


def test_broker_outage_reported_then_sent(
    store, clock, postgres_settings, broker, closed_port: int
) -> None:
    url, queue, client = broker
    down_url = f"redis://127.0.0.1:{closed_port}/0"
    down = make_sweeper(store, postgres_settings, down_url, queue)
    job = store.create_job(make_request(), MODEL)
    clock.advance(seconds=6)

    failed = down.sweep_once()
    report = make_sweeper(store, postgres_settings, url, queue).sweep_once()

    assert failed.sent["never_sent"] == []
    assert len(failed.errors) == 2
    assert report.sent["never_sent"] == [job.id]
    assert store.get_job(job.id).enqueued_at == clock.now
    assert queued_job_ids(client, queue) == [job.id]


def test_taken_metrics_port_logged(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]

        server = serve_metrics(SweeperMetrics().registry, port, "sweeper", "SLOTQ_SWEEPER_METRICS_PORT")

    assert server is None
    assert f"sweeper metrics not served: cannot bind 0.0.0.0:{port}" in caplog.text
    assert "set SLOTQ_SWEEPER_METRICS_PORT to a free port" in caplog.text
