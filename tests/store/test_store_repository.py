"""Job repository on real SQLite and Postgres: state machine, round trips and pagination."""

from __future__ import annotations

import math
import os
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from slotq.requests import parse_job_request
from slotq.store import CancelResult, InvalidCursorError, JobRepository, JobStatus
from slotq.store import repository as repository_module
from slotq.store.delta import decode_delta, encode_delta
from store_support import SETTINGS, make_request, with_clock

JAPANESE = "富士山の高さは何メートルですか？「約3776m」と答えて。"


def sample_result() -> dict:
    return {
        "text": "約3776メートルです。",
        "finish_reason": "stop",
        "prompt_tokens": 21,
        "output_tokens": 9,
        "delta_norm": 0.5,
        "delta": [0.25, -1.5, 3.0],
        "loss_trace": [2.0, 1.5, 1.25],
        "timings_ms": {"prefill": 10.0, "optimize": 20.0, "decode": 30.0, "total": 61.0},
        "head_path": "closed_form",
        "steps_run": 2,
        "diverged_at": None,
        "seed": 1234,
    }


def test_create_stores_request(repository: JobRepository) -> None:
    request = make_request(JAPANESE, slot={"steps": 3, "lr": 0.05}, metadata={"ラベル": "山"})

    created = repository.create_job(request, "tiny-model")
    stored = repository.get_job(created.id)

    assert stored == created
    assert stored.status == "queued"
    assert stored.prompt == JAPANESE
    assert stored.messages is None
    assert stored.slot_steps == 3
    assert stored.slot_lr == 0.05
    assert stored.generation == request.to_dict()["generation"]
    assert stored.metadata == {"ラベル": "山"}
    assert stored.request == request.to_dict()
    assert stored.model_name == "tiny-model"
    assert stored.attempts == 0
    assert stored.created_at.tzinfo is not None
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored.queued_at == stored.created_at
    assert stored.started_at is None


def test_create_stores_messages(repository: JobRepository) -> None:
    messages = [{"role": "system", "content": "簡潔に"}, {"role": "user", "content": "こんにちは"}]
    request = parse_job_request({"messages": messages}, SETTINGS)

    stored = repository.get_job(repository.create_job(request, "m").id)

    assert stored.prompt is None
    assert stored.messages == messages


def test_timestamps_keep_microseconds(repository: JobRepository) -> None:
    repository, clock = with_clock(repository)

    stored = repository.get_job(repository.create_job(make_request(), "m").id)

    assert stored.created_at == clock.now


def test_claim_moves_to_running(repository: JobRepository) -> None:
    repository, clock = with_clock(repository)
    job = repository.create_job(make_request(), "m")
    clock.advance(seconds=1.5)

    claimed = repository.claim_job(job.id, "host-a/123")

    assert claimed.status == "running"
    assert claimed.attempts == 1
    assert claimed.worker == "host-a/123"
    assert claimed.started_at == clock.now
    assert claimed.timings_ms == {"queue_wait": 1500.0}
    assert repository.get_job(job.id) == claimed


def test_duplicate_claim_returns_none(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "first")

    assert repository.claim_job(job.id, "second") is None

    stored = repository.get_job(job.id)
    assert stored.worker == "first"
    assert stored.attempts == 1


def test_claim_missing_job_returns_none(repository: JobRepository) -> None:
    assert repository.claim_job("00000000-0000-0000-0000-000000000000", "w") is None


def test_complete_writes_result(repository: JobRepository) -> None:
    repository, clock = with_clock(repository)
    job = repository.create_job(make_request(), "m")
    clock.advance(milliseconds=250)
    repository.claim_job(job.id, "w")
    clock.advance(seconds=2)

    assert repository.complete_job(job.id, sample_result())

    stored = repository.get_job(job.id)
    assert stored.status == "succeeded"
    assert stored.output_text == "約3776メートルです。"
    assert stored.finish_reason == "stop"
    assert stored.prompt_tokens == 21
    assert stored.output_tokens == 9
    assert stored.delta_norm == 0.5
    assert stored.delta_dim == 3
    assert decode_delta(stored.delta) == [0.25, -1.5, 3.0]
    assert stored.loss_trace == [2.0, 1.5, 1.25]
    assert stored.timings_ms == {
        "queue_wait": 250.0,
        "prefill": 10.0,
        "optimize": 20.0,
        "decode": 30.0,
        "total": 61.0,
    }
    assert stored.head_path == "closed_form"
    assert stored.steps_run == 2
    assert stored.diverged_at is None
    assert stored.seed == 1234
    assert stored.finished_at == clock.now
    assert stored.error is None


def test_complete_twice_writes_once(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "w")
    assert repository.complete_job(job.id, sample_result())
    first = repository.get_job(job.id)

    second_result = {**sample_result(), "text": "other", "delta": [9.0]}

    assert not repository.complete_job(job.id, second_result)
    assert repository.get_job(job.id) == first


def test_complete_queued_job_rejected(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")

    assert not repository.complete_job(job.id, sample_result())
    assert repository.get_job(job.id).status == "queued"
    assert repository.get_job(job.id).output_text is None


def test_complete_unknown_key_raises(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "w")

    with pytest.raises(ValueError, match="unknown result keys"):
        repository.complete_job(job.id, {"text": "x", "colour": "red"})
    assert repository.get_job(job.id).status == "running"


def test_complete_non_finite_values_stored_as_null(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "w")

    repository.complete_job(job.id, {"text": "x", "loss_trace": [1.0, math.nan, math.inf], "delta_norm": math.nan})

    stored = repository.get_job(job.id)
    assert stored.loss_trace == [1.0, None, None]
    assert stored.delta_norm is None


@pytest.mark.parametrize("claimed", [False, True])
def test_fail_queued_or_running(repository: JobRepository, claimed: bool) -> None:
    job = repository.create_job(make_request(), "m")
    if claimed:
        repository.claim_job(job.id, "w")

    assert repository.fail_job(job.id, "PromptTooLongError: 9000 tokens")

    stored = repository.get_job(job.id)
    assert stored.status == "failed"
    assert stored.error == "PromptTooLongError: 9000 tokens"
    assert stored.finished_at is not None


def test_fail_finished_job_rejected(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "w")
    repository.complete_job(job.id, sample_result())

    assert not repository.fail_job(job.id, "late error")
    assert repository.get_job(job.id).status == "succeeded"
    assert repository.get_job(job.id).error is None


def test_fail_long_error_cut(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")

    repository.fail_job(job.id, "e" * 20000)

    assert len(repository.get_job(job.id).error) == repository_module.MAX_ERROR_CHARS


def test_cancel_queued(repository: JobRepository) -> None:
    repository, clock = with_clock(repository)
    job = repository.create_job(make_request(), "m")
    clock.advance(seconds=1)

    outcome = repository.cancel_job(job.id)

    assert outcome.result is CancelResult.CANCELLED
    assert outcome.cancelled
    assert outcome.job.status == "cancelled"
    assert outcome.job.cancelled_at == clock.now
    assert outcome.job.finished_at == clock.now
    assert repository.claim_job(job.id, "w") is None


def test_cancel_running_left_running(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")
    repository.claim_job(job.id, "w")

    outcome = repository.cancel_job(job.id)

    assert outcome.result is CancelResult.RUNNING
    assert not outcome.cancelled
    assert outcome.job.status == "running"
    assert outcome.job.cancelled_at is None
    assert repository.complete_job(job.id, sample_result())


@pytest.mark.parametrize("final_status", ["succeeded", "failed", "cancelled"])
def test_cancel_finished(repository: JobRepository, final_status: str) -> None:
    job = repository.create_job(make_request(), "m")
    if final_status == "succeeded":
        repository.claim_job(job.id, "w")
        repository.complete_job(job.id, sample_result())
    elif final_status == "failed":
        repository.fail_job(job.id, "boom")
    else:
        repository.cancel_job(job.id)

    outcome = repository.cancel_job(job.id)

    assert outcome.result is CancelResult.FINISHED
    assert outcome.job.status == final_status


def test_cancel_missing(repository: JobRepository) -> None:
    outcome = repository.cancel_job("00000000-0000-0000-0000-000000000000")

    assert outcome.result is CancelResult.NOT_FOUND
    assert outcome.job is None


def test_japanese_stored_unescaped(repository: JobRepository) -> None:
    job = repository.create_job(make_request(JAPANESE, metadata={"メモ": "日本語"}), "m")

    cast = "::text" if repository.engine.dialect.name == "postgresql" else ""
    with repository.engine.connect() as connection:
        raw = connection.execute(
            text(f"SELECT metadata{cast}, request{cast} FROM jobs WHERE id = :id"), {"id": job.id}
        ).one()

    assert "日本語" in raw[0]
    assert "\\u" not in raw[0]
    assert JAPANESE in raw[1]


def test_list_newest_first_with_cursor(repository: JobRepository) -> None:
    repository, clock = with_clock(repository)
    ids = []
    for index in range(7):
        # Jobs 2 and 3 share a timestamp, so the id must break the tie.
        if index != 3:
            clock.advance(seconds=1)
        ids.append(repository.create_job(make_request(f"prompt {index}"), "m").id)

    seen = []
    cursor = None
    pages = 0
    while True:
        page, cursor = repository.list_jobs(cursor=cursor, limit=3)
        seen.extend(job.id for job in page)
        pages += 1
        if cursor is None:
            break

    assert pages == 3
    assert len(seen) == 7
    assert set(seen) == set(ids)
    assert seen[:3] == [ids[6], ids[5], ids[4]]
    assert seen[5:] == [ids[1], ids[0]]
    assert set(seen[3:5]) == {ids[2], ids[3]}


def test_list_exact_page_has_no_cursor(repository: JobRepository) -> None:
    for _ in range(3):
        repository.create_job(make_request(), "m")

    page, cursor = repository.list_jobs(limit=3)

    assert len(page) == 3
    assert cursor is None


def test_list_filters_status(repository: JobRepository) -> None:
    queued = repository.create_job(make_request(), "m")
    running = repository.create_job(make_request(), "m")
    repository.claim_job(running.id, "w")

    assert [job.id for job in repository.list_jobs(status="queued")[0]] == [queued.id]
    assert [job.id for job in repository.list_jobs(status="running")[0]] == [running.id]
    assert repository.list_jobs(status="failed")[0] == []


def test_list_rejects_bad_arguments(repository: JobRepository) -> None:
    with pytest.raises(ValueError, match="invalid status"):
        repository.list_jobs(status="done")
    with pytest.raises(ValueError, match="invalid limit"):
        repository.list_jobs(limit=0)
    with pytest.raises(InvalidCursorError):
        repository.list_jobs(cursor="not-a-cursor")


def test_concurrent_claims_one_wins(postgres_repository: JobRepository) -> None:
    job = postgres_repository.create_job(make_request(), "m")
    barrier = threading.Barrier(8)
    results = []

    def claim(name: str) -> None:
        barrier.wait(timeout=10)
        results.append(postgres_repository.claim_job(job.id, name))

    threads = [threading.Thread(target=claim, args=(f"w{index}",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    winners = [result for result in results if result is not None]
    assert len(results) == 8
    assert len(winners) == 1
    assert postgres_repository.get_job(job.id).attempts == 1


def test_engine_usable_after_fork(postgres_repository: JobRepository, postgres_engine: Engine) -> None:
    job = postgres_repository.create_job(make_request(), "m")
    # Open a pooled connection in the parent, which the child must not reuse.
    postgres_repository.get_job(job.id)

    pid = os.fork()
    if pid == 0:
        exit_code = 1
        try:
            if postgres_repository.claim_job(job.id, "child") is not None:
                exit_code = 0
        finally:
            # The forked copy of pytest must not run teardown code; it leaves at once.
            os._exit(exit_code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert postgres_repository.get_job(job.id).worker == "child"
    assert postgres_repository.get_job(job.id).status == JobStatus.RUNNING.value


def test_module_functions_use_configured_store(sqlite_url: str) -> None:
    repository_module.configure(sqlite_url)
    try:
        job = repository_module.create_job(make_request(), "m")

        assert repository_module.get_job(job.id).status == "queued"
        assert repository_module.claim_job(job.id, "w").status == "running"
        assert repository_module.complete_job(job.id, {"text": "done"})
        assert repository_module.cancel_job(job.id).result is CancelResult.FINISHED
        assert not repository_module.fail_job(job.id, "x")
        assert [item.id for item in repository_module.list_jobs()[0]] == [job.id]
    finally:
        repository_module._default_repository = None


def test_delta_encoding_little_endian() -> None:
    raw, dim = encode_delta([1.0, -2.0])

    assert dim == 2
    assert raw == b"\x00\x00\x80\x3f\x00\x00\x00\xc0"
    assert decode_delta(raw) == [1.0, -2.0]
    assert encode_delta(raw) == (raw, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        encode_delta(b"\x00\x00\x00")
