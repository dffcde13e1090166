"""Claiming several queued jobs at once, for workers that run jobs as one SLOT batch."""

from __future__ import annotations

from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import BatchLine, BatchSpec, JobRepository

SETTINGS = Settings(data_dir="/nonexistent/slotq-tests")


def submit(repository: JobRepository, count: int, model_name: str = "model-a") -> list[str]:
    request = parse_job_request({"prompt": "注文書を確認してください"}, SETTINGS)
    return [repository.create_job(request, model_name).id for _ in range(count)]


def test_claims_oldest_up_to_limit(repository: JobRepository) -> None:
    ids = submit(repository, 5)

    claimed = repository.claim_queued_jobs("worker-1", limit=3)

    assert [record.id for record in claimed] == ids[:3]
    for record in claimed:
        assert record.status == "running"
        assert record.attempts == 1
        assert record.worker == "worker-1"
    assert repository.get_job(ids[3]).status == "queued"


def test_skips_jobs_not_queued(repository: JobRepository) -> None:
    ids = submit(repository, 3)
    repository.claim_job(ids[0], "other-worker")
    repository.cancel_job(ids[1])

    claimed = repository.claim_queued_jobs("worker-1", limit=3)

    assert [record.id for record in claimed] == [ids[2]]
    assert repository.get_job(ids[0]).worker == "other-worker"


def test_claims_only_own_model(repository: JobRepository) -> None:
    submit(repository, 2, model_name="model-b")
    mine = submit(repository, 1, model_name="model-a")

    claimed = repository.claim_queued_jobs("worker-1", limit=4, model_name="model-a")

    assert [record.id for record in claimed] == mine


def test_claimed_job_message_finds_nothing(repository: JobRepository) -> None:
    (job_id,) = submit(repository, 1)
    repository.claim_queued_jobs("worker-1", limit=1)

    assert repository.claim_job(job_id, "worker-2") is None


def test_zero_limit_claims_nothing(repository: JobRepository) -> None:
    ids = submit(repository, 1)
    assert repository.claim_queued_jobs("worker-1", limit=0) == []
    assert repository.get_job(ids[0]).status == "queued"


def test_claims_batch_jobs_in_line_order(repository: JobRepository) -> None:
    # Lines are numbered out of insertion order, and every job of a batch has the same queued_at.
    numbers = [7, 2, 9, 4, 1]
    lines = [
        BatchLine(number, f"注文-{number}", parse_job_request({"prompt": f"メール {number}"}, SETTINGS))
        for number in numbers
    ]
    _, job_ids = repository.create_batch(BatchSpec(), lines, "model-a")
    line_of = dict(zip(job_ids, numbers))

    claimed = repository.claim_queued_jobs("worker-1", limit=3, model_name="model-a")

    assert [line_of[record.id] for record in claimed] == [1, 2, 4]
