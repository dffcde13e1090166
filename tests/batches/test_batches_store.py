"""Batch operations of the repository, on real Postgres and SQLite."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import inspect

from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import BatchLine, BatchSpec, JobRepository
from slotq.store.migrate import current_revision

SETTINGS = Settings()


def lines(count: int, start: int = 1, step: int = 1) -> list[BatchLine]:
    return [
        BatchLine(start + index * step, f"注文-{index}", parse_job_request({"prompt": f"メール {index}"}, SETTINGS))
        for index in range(count)
    ]


def finish(repository: JobRepository, job_id: str, text: str = '{"数量": 1}', **extra) -> None:
    assert repository.claim_job(job_id, "test-worker") is not None
    assert repository.complete_job(job_id, {"text": text, "delta_norm": 0.5, **extra})


def test_migration_past_batches_revision(postgres_url: str, postgres_engine) -> None:
    # Revision ids are zero-padded numbers, so text order is revision order.
    assert current_revision(postgres_url) >= "0003"
    indexes = {index["name"]: index for index in inspect(postgres_engine).get_indexes("jobs")}
    assert indexes["ix_jobs_batch_id_line_number"]["unique"]
    assert indexes["ix_jobs_batch_id_custom_id"]["unique"]
    assert "batches" in inspect(postgres_engine).get_table_names()


def test_create_batch_stores_jobs(repository: JobRepository) -> None:
    spec = BatchSpec(defaults={"slot": {"steps": 2}}, metadata={"部署": "営業"}, input_file_name="注文データ.jsonl")

    batch, job_ids = repository.create_batch(spec, lines(3, start=2), "model-x", skipped_count=lambda: 4)

    assert batch.status == "queued"
    assert batch.line_count == 3
    assert batch.skipped_count == 4
    assert batch.input_file_name == "注文データ.jsonl"
    job = repository.get_job(job_ids[1])
    assert job.batch_id == batch.id
    assert job.custom_id == "注文-1"
    assert job.line_number == 3
    assert job.prompt == "メール 1"
    assert job.status == "queued"
    assert job.model_name == "model-x"
    assert repository.batch_job_ids(batch.id) == job_ids


def test_failed_lines_iterator_rolls_back(repository: JobRepository) -> None:
    def broken():
        yield from lines(1500)
        raise RuntimeError("invalid upload")

    with pytest.raises(RuntimeError):
        repository.create_batch(BatchSpec(), broken(), "m")

    assert repository.list_jobs(limit=10)[0] == []


def test_counts_status_and_timestamps(repository: JobRepository) -> None:
    batch, job_ids = repository.create_batch(BatchSpec(response_format={"type": "regex", "pattern": "."}), lines(4), "m")

    finish(repository, job_ids[0], format_ok=True, parsed_output={}, format_source=None)
    finish(repository, job_ids[1], format_ok=False, format_error="no match")
    repository.claim_job(job_ids[2], "w")

    record = repository.get_batch(batch.id)
    assert record.status == "running"
    assert record.counts.by_status == {"queued": 1, "running": 1, "succeeded": 2, "failed": 0, "cancelled": 0}
    assert (record.counts.format_checked, record.counts.format_ok, record.counts.ran) == (2, 1, 2)
    assert record.started_at is not None
    assert record.finished_at is None

    repository.fail_job(job_ids[2], "boom")
    finish(repository, job_ids[3])
    done = repository.get_batch(batch.id)
    assert done.status == "completed"
    assert done.finished_at is not None
    assert repository.get_batch(batch.id, counts=False).status == "completed"


def test_results_in_order_stop_at_first_unfinished(repository: JobRepository) -> None:
    batch, job_ids = repository.create_batch(BatchSpec(), lines(5, start=2, step=2), "m")
    for index in (0, 1, 3):
        finish(repository, job_ids[index], text=f"答え{index}")

    results = list(repository.iter_batch_results(batch.id))
    window = repository.batch_results_range(batch.id)

    assert [result.line_number for result in results] == [2, 4]
    assert [result.output_text for result in results] == ["答え0", "答え1"]
    assert (window.last_line, window.count, window.complete) == (4, 2, False)

    finish(repository, job_ids[2])
    resumed = list(repository.iter_batch_results(batch.id, after_line=4))
    assert [result.line_number for result in resumed] == [6, 8]

    repository.cancel_batch(batch.id)
    tail = repository.batch_results_range(batch.id, after_line=8)
    assert (tail.last_line, tail.count, tail.complete) == (10, 1, True)


def test_results_paginate_past_page_size(repository: JobRepository, monkeypatch) -> None:
    monkeypatch.setattr("slotq.store.batches.RESULTS_PAGE_ROWS", 7)
    batch, job_ids = repository.create_batch(BatchSpec(), lines(20), "m")
    repository.cancel_batch(batch.id)

    numbers = [result.line_number for result in repository.iter_batch_results(batch.id)]

    assert numbers == list(range(1, 21))


def test_cancel_keeps_finished_and_running(repository: JobRepository) -> None:
    batch, job_ids = repository.create_batch(BatchSpec(), lines(4), "m")
    finish(repository, job_ids[0])
    repository.claim_job(job_ids[1], "w")

    outcome = repository.cancel_batch(batch.id)

    assert outcome.found and not outcome.already_finished
    assert outcome.cancelled_jobs == 2
    assert outcome.batch.status == "cancelling"
    assert repository.get_job(job_ids[0]).status == "succeeded"
    assert repository.get_job(job_ids[2]).status == "cancelled"
    assert repository.claim_job(job_ids[3], "w") is None

    finish_running = repository.complete_job(job_ids[1], {"text": "late"})
    assert finish_running
    final = repository.get_batch(batch.id)
    assert final.status == "cancelled"
    assert final.counts.by_status["succeeded"] == 2
    again = repository.cancel_batch(batch.id)
    assert again.already_finished and again.cancelled_jobs == 0


def test_cancel_unknown_batch(repository: JobRepository) -> None:
    assert repository.cancel_batch("00000000-0000-0000-0000-000000000000").found is False
    assert repository.get_batch("00000000-0000-0000-0000-000000000000") is None


def test_format_result_keys_stored(repository: JobRepository) -> None:
    batch, job_ids = repository.create_batch(BatchSpec(), lines(1), "m")

    finish(repository, job_ids[0], format_ok=False, parsed_output={"品名": "ボルト"}, format_source="embedded", format_error="$.数量: missing")

    job = repository.get_job(job_ids[0])
    assert (job.format_ok, job.parsed_output, job.format_source, job.format_error) == (
        False,
        {"品名": "ボルト"},
        "embedded",
        "$.数量: missing",
    )


def test_overfit_counted(repository: JobRepository) -> None:
    batch, job_ids = repository.create_batch(BatchSpec(), lines(2), "m")
    repository.claim_job(job_ids[0], "w")
    repository.complete_job(job_ids[0], {"text": "x"}, guard={"overfit": True, "validation_loss": 2.0, "validation_loss_base": 1.0})

    assert repository.get_batch(batch.id).counts.overfit == 1


def test_bulk_insert_ten_thousand_is_fast(postgres_repository: JobRepository) -> None:
    many = lines(10_000)

    started = time.perf_counter()
    batch, job_ids = postgres_repository.create_batch(BatchSpec(), many, "m")
    elapsed = time.perf_counter() - started

    assert len(job_ids) == 10_000
    assert postgres_repository.get_batch(batch.id).counts.by_status["queued"] == 10_000
    # A generous bound on a shared 2-core machine; one INSERT per row takes several times longer.
    assert elapsed < 10.0


def test_migration_down_and_up_keeps_jobs(tmp_path) -> None:
    from sqlalchemy import text

    from slotq.store import make_engine
    from slotq.store.migrate import downgrade, upgrade

    url = f"sqlite:///{tmp_path / 'cycle.db'}"
    upgrade(url)
    engine = make_engine(url)
    repository = JobRepository(engine)
    repository.create_job(parse_job_request({"prompt": "残る"}, SETTINGS), "m")
    repository.create_batch(BatchSpec(), lines(2), "m")

    downgrade(url, "0002")
    assert "batches" not in inspect(engine).get_table_names()
    assert "batch_id" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 3

    upgrade(url)
    assert current_revision(url) >= "0003"
    assert repository.create_batch(BatchSpec(), lines(1), "m")[0].line_count == 1
    engine.dispose()
