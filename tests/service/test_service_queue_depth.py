"""`slotq.broker.queue_depth` on the local Redis and on SQLite and Postgres brokers, with messages
sent by the API's real Celery producer.

Redis tests use database index 11 and queue names with a random suffix, and delete every key
that contains the suffix afterwards.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from kombu import Connection

from api.enqueue import RUN_JOB_TASK, make_celery_enqueue
from postgres_support import private_database
from slotq.broker import BrokerError, queue_depth
from slotq.settings import Settings

REDIS_TEST_DB = 11


@pytest.fixture
def redis_broker(redis_url: str) -> str:
    """URL of database 11 on the local Redis."""
    return urlsplit(redis_url)._replace(path=f"/{REDIS_TEST_DB}").geturl()


@pytest.fixture
def queue_name(redis_broker: str) -> Iterator[str]:
    """A queue name no other test uses; Redis keys that contain it are deleted afterwards."""
    suffix = uuid.uuid4().hex[:12]
    yield f"depth-test-{suffix}"

    client = redis.Redis.from_url(redis_broker)
    try:
        keys = list(client.scan_iter(match=f"*{suffix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def sqlite_broker(tmp_path: Path) -> str:
    return f"sqla+sqlite:///{tmp_path / 'broker.db'}"


def send_jobs(broker_url: str, queue: str, count: int, tmp_path: Path) -> None:
    """Send ``count`` messages with the API's Celery producer, as ``POST /v1/jobs`` does."""
    enqueue = make_celery_enqueue(Settings(data_dir=tmp_path, broker_url=broker_url, queue=queue))
    enqueue.many([str(uuid.uuid4()) for _ in range(count)])
    enqueue.producer_app.close()


def test_redis_depth_counts_sent_messages(redis_broker: str, queue_name: str, tmp_path: Path) -> None:
    send_jobs(redis_broker, queue_name, 3, tmp_path)
    assert queue_depth(redis_broker, queue_name) == 3

    send_jobs(redis_broker, queue_name, 2, tmp_path)
    assert queue_depth(redis_broker, queue_name) == 5


def test_redis_depth_counts_priority_messages(redis_broker: str, queue_name: str) -> None:
    producer = Celery("depth-test", broker=redis_broker, set_as_current=False)
    for priority in (0, 5, 9):
        producer.send_task(RUN_JOB_TASK, args=["job"], queue=queue_name, priority=priority)
    producer.close()

    assert queue_depth(redis_broker, queue_name) == 3


def test_redis_depth_excludes_taken_messages(redis_broker: str, queue_name: str, tmp_path: Path) -> None:
    send_jobs(redis_broker, queue_name, 2, tmp_path)

    with Connection(redis_broker) as connection:
        simple = connection.SimpleQueue(queue_name)
        taken = simple.get(timeout=5)
        depth_while_taken = queue_depth(redis_broker, queue_name)
        taken.ack()
        simple.close()

    assert depth_while_taken == 1
    assert queue_depth(redis_broker, queue_name) == 1


def test_redis_undeclared_queue_zero(redis_broker: str, queue_name: str, tmp_path: Path) -> None:
    send_jobs(redis_broker, queue_name, 1, tmp_path)

    assert queue_depth(redis_broker, queue_name + "-never-declared") == 0


def test_redis_depth_other_database_separate(redis_broker: str, queue_name: str, tmp_path: Path) -> None:
    send_jobs(redis_broker, queue_name, 2, tmp_path)
    other_database = urlsplit(redis_broker)._replace(path=f"/{REDIS_TEST_DB + 1}").geturl()

    assert queue_depth(other_database, queue_name) == 0


def test_sqlite_depth_counts_sent_messages(sqlite_broker: str, tmp_path: Path) -> None:
    send_jobs(sqlite_broker, "slotq", 4, tmp_path)

    assert queue_depth(sqlite_broker, "slotq") == 4


def test_sqlite_depth_excludes_taken_messages(sqlite_broker: str, tmp_path: Path) -> None:
    send_jobs(sqlite_broker, "slotq", 3, tmp_path)

    with Connection(sqlite_broker) as connection:
        simple = connection.SimpleQueue("slotq")
        taken = simple.get(timeout=5)
        depth_while_taken = queue_depth(sqlite_broker, "slotq")
        taken.ack()
        simple.close()

    assert depth_while_taken == 2
    assert queue_depth(sqlite_broker, "slotq") == 2


def test_sqlite_undeclared_queue_zero(sqlite_broker: str, tmp_path: Path) -> None:
    send_jobs(sqlite_broker, "slotq", 1, tmp_path)

    assert queue_depth(sqlite_broker, "never-declared") == 0


def test_sqlite_file_without_tables_zero(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")

    assert queue_depth(f"sqla+sqlite:///{empty}", "slotq") == 0


def test_sqlite_missing_file_error_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "broker.db"

    with pytest.raises(BrokerError, match="unreachable"):
        queue_depth(f"sqla+sqlite:///{missing}", "slotq")
    assert not missing.exists()
    assert not missing.parent.exists()


def test_sqlite_fresh_file_zero_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "broker.db"

    assert queue_depth(f"sqla+sqlite:///{missing}", "slotq") == 0
    assert not missing.exists()


def test_sqlite_read_writes_nothing(sqlite_broker: str, tmp_path: Path) -> None:
    send_jobs(sqlite_broker, "slotq", 1, tmp_path)
    broker_file = tmp_path / "broker.db"
    before = broker_file.read_bytes()

    assert queue_depth(sqlite_broker, "never-declared") == 0
    assert queue_depth(sqlite_broker, "slotq") == 1
    assert broker_file.read_bytes() == before


def test_postgres_broker_depth(tmp_path: Path) -> None:
    with private_database("slotq_broker") as database_url:
        broker_url = "sqla+" + database_url
        send_jobs(broker_url, "slotq", 2, tmp_path)

        assert queue_depth(broker_url, "slotq") == 2
        assert queue_depth(broker_url, "never-declared") == 0


def test_unreachable_redis_fails_fast(closed_port: int) -> None:
    started = time.monotonic()

    with pytest.raises(BrokerError, match=f"redis://127.0.0.1:{closed_port}/0 is unreachable"):
        queue_depth(f"redis://127.0.0.1:{closed_port}/0", "slotq", timeout_s=1.0)
    assert time.monotonic() - started < 1.5


def test_silent_redis_times_out(tmp_path: Path) -> None:
    # A listening socket that never responds: the connection succeeds and the reads time out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()

        with pytest.raises(BrokerError, match="did not respond within 0.5 s"):
            queue_depth(f"redis://127.0.0.1:{port}/0", "slotq", timeout_s=0.5)
        elapsed_s = time.monotonic() - started

    assert elapsed_s < 1.5


def test_unreachable_postgres_broker_fails(closed_port: int) -> None:
    started = time.monotonic()

    with pytest.raises(BrokerError, match="unreachable"):
        queue_depth(f"sqla+postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/test", "slotq", timeout_s=1.0)
    assert time.monotonic() - started < 3.0


def test_password_not_in_error(closed_port: int) -> None:
    with pytest.raises(BrokerError) as raised:
        queue_depth(f"redis://:s3cret-pass@127.0.0.1:{closed_port}/0", "slotq", timeout_s=0.5)

    assert "s3cret-pass" not in str(raised.value)


@pytest.mark.parametrize("url", ["amqp://guest@127.0.0.1//", "memory://", "sqla+not a url"])
def test_unsupported_broker_url_error(url: str) -> None:
    with pytest.raises(BrokerError):
        queue_depth(url, "slotq", timeout_s=0.5)


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), float("inf")])
def test_invalid_timeout_rejected(sqlite_broker: str, timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        queue_depth(sqlite_broker, "slotq", timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("kombu_url", "redis_url"),
    [
        ("redis+socket:///run/redis/redis.sock?virtual_host=3", "unix:///run/redis/redis.sock?db=3"),
        ("redis+socket:///tmp/redis.sock", "unix:///tmp/redis.sock?db=0"),
    ],
)
def test_socket_url_converted(kombu_url: str, redis_url: str) -> None:
    from slotq.broker import _unix_socket_url

    assert _unix_socket_url(kombu_url) == redis_url


def test_missing_socket_unreachable(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="unreachable"):
        queue_depth(f"redis+socket://{tmp_path / 'no-redis.sock'}", "slotq", timeout_s=0.5)
