"""Tenants, API keys, tenant scoping and idempotency in the repository, on Postgres and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import BatchLine, BatchSpec, IdempotencyClaim, IdempotencyKeyExistsError, JobRepository, QueueFullError, make_engine
from slotq.store.migrate import current_revision, upgrade

SETTINGS = Settings()


def request(prompt: str = "x"):
    return parse_job_request({"prompt": prompt}, SETTINGS)


def claim(tenant_id: str, key: str = "k", request_hash: str = "h") -> IdempotencyClaim:
    return IdempotencyClaim(tenant_id, key, request_hash, 3600, lambda record: {"id": record.id})


def test_tenant_created_once(repository: JobRepository) -> None:
    first = repository.get_or_create_tenant("acme")
    second = repository.get_or_create_tenant("acme")

    assert first == second


def test_jobs_scoped_to_tenant(repository: JobRepository) -> None:
    acme = repository.get_or_create_tenant("acme").id
    globex = repository.get_or_create_tenant("globex").id
    job = repository.create_job(request(), "m", tenant_id=acme)

    assert repository.get_job(job.id, tenant_id=acme).tenant_id == acme
    assert repository.get_job(job.id, tenant_id=globex) is None
    assert repository.get_job(job.id) is not None
    assert repository.cancel_job(job.id, tenant_id=globex).result.value == "not_found"
    assert repository.get_job(job.id).status == "queued"
    assert repository.list_jobs(tenant_id=globex) == ([], None)
    assert [found.id for found in repository.list_jobs(tenant_id=acme)[0]] == [job.id]


def test_batches_scoped_to_tenant(repository: JobRepository) -> None:
    acme = repository.get_or_create_tenant("acme").id
    globex = repository.get_or_create_tenant("globex").id
    batch, job_ids = repository.create_batch(BatchSpec(), [BatchLine(1, "a", request())], "m", tenant_id=acme)

    assert repository.get_batch(batch.id, tenant_id=globex) is None
    assert not repository.cancel_batch(batch.id, tenant_id=globex).found
    assert repository.get_batch(batch.id, tenant_id=acme).tenant_id == acme
    assert repository.get_job(job_ids[0]).tenant_id == acme


def test_idempotency_key_taken_rolls_back(repository: JobRepository) -> None:
    acme = repository.get_or_create_tenant("acme").id
    first = repository.create_job(request(), "m", tenant_id=acme, idempotency=claim(acme))

    with pytest.raises(IdempotencyKeyExistsError) as raised:
        repository.create_job(request(), "m", tenant_id=acme, idempotency=claim(acme))

    assert raised.value.stored.resource_id == first.id
    assert raised.value.stored.body == {"id": first.id}
    assert len(repository.list_jobs()[0]) == 1


def test_queue_limit_rolls_back_batch(repository: JobRepository) -> None:
    repository.create_job(request(), "m")
    lines = [BatchLine(index + 1, f"c{index}", request()) for index in range(3)]

    with pytest.raises(QueueFullError) as raised:
        repository.create_batch(BatchSpec(), lines, "m", max_queued_jobs=3)

    assert (raised.value.queued, raised.value.adding, raised.value.limit) == (1, 3, 3)
    assert repository.queued_job_count() == 1


def test_sqlite_upgrade_keeps_batches(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO batches (id, status, model_name, line_count, skipped_count, defaults, metadata, created_at) "
            "VALUES ('b1', 'queued', 'm', 1, 0, '{}', '{}', '2025-01-01 00:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO jobs (id, status, request, slot_steps, slot_lr, generation, metadata, model_name, created_at, "
            "queued_at, attempts, batch_id, custom_id, line_number) VALUES ('j1', 'queued', '{}', 1, 0.1, '{}', '{}', "
            "'m', '2025-01-01 00:00:00', '2025-01-01 00:00:00', 0, 'b1', 'a', 1)"
        )

    upgrade(url)

    assert current_revision(url) >= "0004"
    assert {"tenant_id", "purged_at"} <= {column["name"] for column in inspect(engine).get_columns("batches")}
    repository = JobRepository(engine)
    assert repository.get_job("j1").batch_id == "b1"
    assert repository.get_job("j1").tenant_id is None
    assert repository.get_batch("b1") is not None
    engine.dispose()
