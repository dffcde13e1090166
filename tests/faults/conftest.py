"""Fixtures of the fault tests: a private Postgres server per session, a private Redis per test.

The tests crash and restart these servers, so they never use the shared services on 5432 and
6379. Each test gets a new migrated database on the private Postgres, a Redis of its own, an
API key, and the environment of its slot-queue processes, which it starts itself and which are
stopped at the end. A missing server program makes the fixtures fail, never skip.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The process helpers of the integration tests live next to their conftest, which pytest puts on
# sys.path only when it collects that folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault_support import FaultStack, PrivatePostgres, PrivateRedis, Service, migrate, service_environment  # noqa: E402
from integration_support import convert_bundled_model, create_api_key  # noqa: E402



@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """Folder with the converted bundled model, shared with the integration tests."""
    return convert_bundled_model()


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this session on a free port, whose folder is deleted at the end."""
    # Not under pytest's temporary folder: that one is private to root, and the server runs as
    # the postgres user when the tests run as root.
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="slotq-faults-postgres-")))
    try:
        server.initialise()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server without persistence for one test, on a free port."""
    work_dir = tmp_path / "redis"
    work_dir.mkdir()
    server = PrivateRedis(work_dir)
    server.start()
    yield server
    server.crash()


@pytest.fixture
def fault_stack(private_postgres: PrivatePostgres, private_redis: PrivateRedis, model_cache_dir: Path,
                tmp_path: Path) -> Iterator[FaultStack]:
    """A migrated database and an API key for one test, whose processes are stopped at the end.

    Workers run one job per batch, so every job has a task message and a claim of its own.
    """
    # A test that stopped Postgres and failed before starting it again leaves it stopped.
    if not private_postgres.is_running():
        private_postgres.start()
    database_url = private_postgres.create_database(f"slotq_faults_{uuid.uuid4().hex[:12]}")
    env = service_environment(database_url, private_redis.url, tmp_path / "data", model_cache_dir,
                              {"SLOTQ_WORKER_BATCH_SIZE": "1"})
    migrate(env)
    api_key = create_api_key(env, "faults")

    service = Service(env, tmp_path)
    try:
        yield FaultStack(private_postgres, private_redis, database_url, service, api_key)
    finally:
        service.stop_all()
