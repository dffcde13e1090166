"""Fixtures shared by the whole test suite.

Store, API and worker tests run against the real local PostgreSQL and Redis. When either is
unreachable the fixtures fail (they never skip), naming the URL and the error.

- Each test session creates its own Postgres database ``slotq_test_<random>``, migrates it with
  Alembic and drops it at the end, so parallel runs never share rows.
- Rows are deleted after every test that used a store fixture.
- ``SLOTQ_*`` variables are removed from the environment of every test (``SLOTQ_TEST_*`` are
  kept), so no test depends on the developer's configuration.

Override the services with ``SLOTQ_TEST_POSTGRES_URL`` (a database the test user may connect
to and create databases from) and ``SLOTQ_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete
from sqlalchemy.engine import Engine

from postgres_support import private_database
from slotq.settings import Settings
from slotq.store import Base, JobRepository, make_engine
from slotq.store.migrate import upgrade

REDIS_URL = os.environ.get("SLOTQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def clean_slotq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove ``SLOTQ_*`` variables (except ``SLOTQ_TEST_*``) for the duration of a test."""
    for name in list(os.environ):
        if name.startswith("SLOTQ_") and not name.startswith("SLOTQ_TEST_"):
            monkeypatch.delenv(name)


class ClosingClient(FlaskClient):
    """Test client that reads every response to its end and closes it, as a WSGI server does.

    The API sends a batch's messages from a ``call_on_close`` callback, which the default test
    client never runs.
    """

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


@pytest.fixture(autouse=True)
def closing_test_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``app.test_client()`` of every Flask app a `ClosingClient`."""
    monkeypatch.setattr(Flask, "test_client_class", ClosingClient)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, migrated Postgres database private to this test session."""
    with private_database("slotq_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """Engine on the session's Postgres database."""
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_repository(postgres_engine: Engine) -> Iterator[JobRepository]:
    """Repository on the session's Postgres database; its rows are deleted after the test."""
    yield JobRepository(postgres_engine)
    delete_all_rows(postgres_engine)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh, migrated SQLite file for one test."""
    url = f"sqlite:///{tmp_path / 'slotq.db'}"
    upgrade(url)
    return url


@pytest.fixture
def sqlite_repository(sqlite_url: str) -> Iterator[JobRepository]:
    """Repository on a fresh SQLite file."""
    engine = make_engine(sqlite_url)
    yield JobRepository(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def repository(request: pytest.FixtureRequest) -> JobRepository:
    """Repository on each supported database in turn."""
    return request.getfixturevalue(f"{request.param}_repository")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the local Redis, checked with PING."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 that was just verified to refuse connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with socket.socket() as client:
        client.settimeout(1.0)
        if client.connect_ex(("127.0.0.1", port)) == 0:
            pytest.fail(f"port {port} on 127.0.0.1 accepted a connection; expected it closed")
    return port


@pytest.fixture
def postgres_settings(postgres_url: str, tmp_path: Path) -> Settings:
    """Settings on the session's Postgres database and a SQLite broker file in ``tmp_path``.

    The broker is a private file, not the shared Redis, so messages sent by a test can never
    reach a worker started by another test run.
    """
    return Settings(
        data_dir=tmp_path,
        database_url=postgres_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
    )


def delete_all_rows(engine: Engine) -> None:
    """Delete every row of every table in the ORM metadata, children first."""
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
