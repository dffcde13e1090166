"""Workers run several queued jobs as one SLOT batch, with the same outputs as one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import JobRepository
from worker.tasks import run_job

BODIES = [
    {"messages": [{"role": "user", "content": "Name a colour."}], "slot": {"steps": 3, "lr": 0.01}},
    {"messages": [{"role": "user", "content": "次の注文をJSONにしてください。品名: 鉛筆、数量: 3本。"}],
     "slot": {"steps": 5, "lr": 0.05}},
    {"prompt": "The capital of Italy is", "slot": {"steps": 0}},
]


def submit_all(store: JobRepository, tmp_path: Path) -> list[str]:
    settings = Settings(data_dir=tmp_path)
    ids = []
    for body in BODIES:
        request = parse_job_request({**body, "generation": {"max_new_tokens": 8}}, settings)
        ids.append(store.create_job(request, "api-model").id)
    return ids


def test_one_task_runs_queued_jobs_together(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_SIZE", "3")
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_WAIT_MS", "0")
    ids = submit_all(store, tmp_path)

    run_job(ids[0])

    for job_id in ids:
        job = store.get_job(job_id)
        assert job.status == "succeeded", job.error
        assert job.attempts == 1
    for job_id in ids[1:]:
        run_job(job_id)  # the companions' own messages find nothing to claim
        assert store.get_job(job_id).attempts == 1


def test_batched_outputs_equal_one_at_a_time(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_WAIT_MS", "0")
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_SIZE", "3")
    batched_ids = submit_all(store, tmp_path)
    run_job(batched_ids[0])

    monkeypatch.setenv("SLOTQ_WORKER_BATCH_SIZE", "1")
    single_ids = submit_all(store, tmp_path)
    for job_id in single_ids:
        run_job(job_id)

    for batched_id, single_id in zip(batched_ids, single_ids):
        batched, single = store.get_job(batched_id), store.get_job(single_id)
        assert batched.status == single.status == "succeeded"
        assert batched.output_text == single.output_text
        assert batched.output_tokens == single.output_tokens
        assert batched.delta_norm == pytest.approx(single.delta_norm, rel=1e-4, abs=1e-6)
        if single.validation_loss is None:  # steps = 0 jobs skip the over-fitting check
            assert batched.validation_loss is None
        else:
            assert batched.validation_loss == pytest.approx(single.validation_loss, rel=1e-4)


def test_batch_size_one_runs_alone(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_SIZE", "1")
    ids = submit_all(store, tmp_path)

    run_job(ids[0])

    assert store.get_job(ids[0]).status == "succeeded"
    assert store.get_job(ids[1]).status == "queued"
    assert store.get_job(ids[2]).status == "queued"


def test_too_long_prompt_fails_alone(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_SIZE", "2")
    monkeypatch.setenv("SLOTQ_WORKER_BATCH_WAIT_MS", "0")
    monkeypatch.setenv("SLOTQ_MAX_PROMPT_TOKENS", "20")
    settings = Settings(data_dir=tmp_path)
    long_id = store.create_job(parse_job_request({"prompt": "word " * 40}, settings), "api-model").id
    short_id = store.create_job(parse_job_request({"prompt": "Hi", "generation": {"max_new_tokens": 2}}, settings),
                                "api-model").id

    run_job(long_id)

    long_job, short_job = store.get_job(long_id), store.get_job(short_id)
    assert long_job.status == "failed"
    assert "prompt" in long_job.error
    assert "20" in long_job.error
    assert short_job.status == "succeeded", short_job.error
