"""``slotq purge``: texts and δ of old finished jobs go, their measurements stay."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone

import pytest

from slotq.purge import PurgeError, add_purge_command, purge
from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import BatchLine, BatchSpec, JobRepository
from slotq.store.purge import PURGE_CHUNK_ROWS

SETTINGS = Settings()
NOW = datetime(2025, 12, 6, 12, 0, tzinfo=timezone.utc)
JAPANESE = "秘密の質問：富士山の高さは？"


class Clock:
    def __init__(self) -> None:
        self.now = NOW - timedelta(days=40)

    def __call__(self) -> datetime:
        return self.now


def finished_job(repository: JobRepository, clock: Clock, days_ago: float, prompt: str = JAPANESE) -> str:
    clock.now = NOW - timedelta(days=days_ago, minutes=1)
    job = repository.create_job(parse_job_request({"messages": [{"role": "user", "content": prompt}]}, SETTINGS), "m")
    repository.claim_job(job.id, "worker-1")
    clock.now = NOW - timedelta(days=days_ago)
    repository.complete_job(
        job.id,
        {
            "text": "答え：3776m",
            "delta": [0.5, -0.25, 1.0],
            "delta_norm": 1.14,
            "loss_trace": [2.0, 1.5],
            "prompt_tokens": 12,
            "output_tokens": 5,
            "timings_ms": {"prefill": 1.0, "optimize": 2.0, "decode": 3.0, "total": 6.0},
            "parsed_output": {"高さ": 3776},
            "format_ok": True,
            "format_source": "whole",
        },
        guard={"validation_loss": 1.0, "validation_loss_base": 1.1, "overfit": False, "tolerance": 0.05},
    )
    return job.id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(postgres_repository: JobRepository, clock: Clock) -> JobRepository:
    """Repository on the session's Postgres database with a clock the test moves."""
    return JobRepository(postgres_repository.engine, clock=clock)


def run_purge(store: JobRepository, clock: Clock, days: float, dry_run: bool = False):
    clock.now = NOW
    return purge(days, dry_run, repository=store, progress=False)


def test_purge_removes_texts_keeps_metrics(store: JobRepository, clock: Clock) -> None:
    old = finished_job(store, clock, days_ago=31)
    recent = finished_job(store, clock, days_ago=5)

    summary = run_purge(store, clock, 30)

    assert summary.jobs == 1
    job = store.get_job(old)
    assert job.purged_at == NOW
    assert job.prompt is None
    assert job.messages is None
    assert job.output_text is None
    assert job.parsed_output is None
    assert job.delta is None
    assert "messages" not in job.request
    assert JAPANESE not in repr(job)
    assert job.request["slot"] == {"steps": 5, "lr": 0.1, "overfit_policy": "flag"}
    assert job.status == "succeeded"
    assert job.delta_norm == 1.14
    assert job.delta_dim == 3
    assert job.loss_trace == [2.0, 1.5]
    assert job.prompt_tokens == 12
    assert job.output_tokens == 5
    assert job.timings_ms["total"] == 6.0
    assert job.validation_loss == 1.0
    assert job.overfit is False
    assert job.format_ok is True
    assert job.worker == "worker-1"
    assert store.get_job(recent).output_text == "答え：3776m"
    assert store.get_job(recent).purged_at is None


def test_dry_run_changes_nothing(store: JobRepository, clock: Clock) -> None:
    old = finished_job(store, clock, days_ago=31)

    summary = run_purge(store, clock, 30, dry_run=True)

    assert summary.dry_run
    assert summary.jobs == 1
    assert store.get_job(old).output_text == "答え：3776m"


def test_purge_is_idempotent(store: JobRepository, clock: Clock) -> None:
    finished_job(store, clock, days_ago=31)

    first = run_purge(store, clock, 30)
    second = run_purge(store, clock, 30)

    assert first.jobs == 1
    assert second.jobs == 0


def test_unfinished_jobs_kept(store: JobRepository, clock: Clock) -> None:
    clock.now = NOW - timedelta(days=60)
    queued = store.create_job(parse_job_request({"prompt": "待機中"}, SETTINGS), "m")

    assert run_purge(store, clock, 0).jobs == 0
    assert store.get_job(queued.id).prompt == "待機中"


def test_purged_job_served_by_api(store: JobRepository, clock: Clock, postgres_repository, client_for, tenant_key, schema_check) -> None:
    client = client_for(tenant_key)
    job_id = client.post("/v1/jobs", json={"prompt": JAPANESE}).get_json()["id"]
    postgres_repository.claim_job(job_id, "w")
    postgres_repository.complete_job(job_id, {"text": "答え", "delta_norm": 0.5})

    clock.now = datetime.now(timezone.utc) + timedelta(days=2)
    purge(1, repository=store, progress=False)
    response = client.get(f"/v1/jobs/{job_id}")

    body = response.get_json()
    assert response.status_code == 200
    assert schema_check("Job", body) == []
    assert body["purged_at"] is not None
    assert body["result"]["output_text"] is None
    assert body["result"]["delta_norm"] == 0.5
    assert JAPANESE not in response.get_data(as_text=True)


def test_batch_validation_prompts_purged(store: JobRepository, clock: Clock) -> None:
    clock.now = NOW - timedelta(days=50)
    spec = BatchSpec(validation_prompts=[[{"role": "user", "content": "検証"}]])
    line = BatchLine(1, "a", parse_job_request({"prompt": "x"}, SETTINGS))
    batch, (job_id,) = store.create_batch(spec, [line], "m")
    store.claim_job(job_id, "w")
    store.complete_job(job_id, {"text": "y"})
    store.get_batch(batch.id)

    summary = run_purge(store, clock, 30)

    assert summary.batches == 1
    assert store.get_batch(batch.id).validation_prompts is None


def test_large_purge_in_chunks(store: JobRepository, clock: Clock) -> None:
    clock.now = NOW - timedelta(days=40)
    lines = [BatchLine(index + 1, f"c{index}", parse_job_request({"prompt": f"p{index}"}, SETTINGS)) for index in range(PURGE_CHUNK_ROWS + 20)]
    batch, job_ids = store.create_batch(BatchSpec(), lines, "m")
    store.cancel_batch(batch.id)
    chunks: list[int] = []

    clock.now = NOW
    purged = store.purge_jobs(NOW - timedelta(days=30), on_chunk=chunks.append)

    assert purged == PURGE_CHUNK_ROWS + 20
    assert chunks == [PURGE_CHUNK_ROWS, 20]
    assert store.get_job(job_ids[-1]).prompt is None


@pytest.mark.parametrize("days", [-1, 36_501, float("nan")])
def test_invalid_age_rejected(store: JobRepository, days: float) -> None:
    with pytest.raises(PurgeError, match="--older-than"):
        purge(days, repository=store, progress=False)


def test_purge_command(postgres_url: str, store: JobRepository, clock: Clock, monkeypatch, capsys) -> None:
    finished_job(store, clock, days_ago=400)
    monkeypatch.setenv("SLOTQ_DATABASE_URL", postgres_url)
    parser = argparse.ArgumentParser(prog="slotq")
    add_purge_command(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.handler(args)

    assert run("purge", "--older-than", "365", "--dry-run") == 0
    assert "would purge 1 jobs" in capsys.readouterr().out
    assert run("purge", "--older-than", "365") == 0
    assert "purged 1 jobs" in capsys.readouterr().out
    assert run("purge", "--older-than", "365") == 0
    assert "purged 0 jobs" in capsys.readouterr().out
    assert run("purge", "--older-than", "-3") == 2
