"""Fixtures of the integration tests: private Postgres database, private Redis queue, model cache.

Every process these tests start runs the real ``slotq`` command line with the bundled model.
The Postgres database ``slotq_it_<random>`` is created for the session and dropped at the end.
The Redis queue ``slotq-it-<random>`` lives in a Redis database index picked at random, and its
keys are deleted at the end. Unreachable services make the fixtures fail, never skip.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import make_url

from integration_support import convert_bundled_model
from postgres_support import private_database

REDIS_URL = os.environ.get("SLOTQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Redis keys that kombu and Celery share between all queues of one database.
SHARED_KOMBU_KEYS = {
    "_kombu.binding_deadlines",
    "_kombu.binding.celeryev",
    "_kombu.binding.celery.pidbox",
    "_kombu.binding.reply.celery.pidbox",
    "unacked",
    "unacked_index",
    "unacked_mutex",
}


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Folder with the converted bundled model, kept between test runs."""
    return convert_bundled_model()


@pytest.fixture(scope="session")
def integration_database_url() -> Iterator[str]:
    """URL of a new, empty Postgres database for this session; `slotq db upgrade` migrates it."""
    with private_database("slotq_it") as url:
        yield url


@pytest.fixture(scope="session")
def integration_broker() -> Iterator[dict[str, str]]:
    """Redis broker URL on a random database index and a queue name private to this session."""
    database_index = random.randint(1, 15)
    url = make_url(REDIS_URL).set(database=str(database_index)).render_as_string(hide_password=False)
    queue = f"slotq-it-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable: {error}")

    yield {"url": url, "queue": queue}

    for key in client.scan_iter(match=f"*{queue}*"):
        client.delete(key)
    # kombu and Celery also keep keys that every queue of a database shares. They are dropped
    # only when no other queue's key is left, because then no other run uses this index.
    # Rate-limit buckets of the API expire by themselves within seconds.
    remaining = {key.decode() for key in client.scan_iter() if not key.startswith(b"slotq:ratelimit:")}
    if remaining <= SHARED_KOMBU_KEYS:
        for key in remaining:
            client.delete(key)
    client.close()
