"""Leases, attempt fencing and send records of the job store, on real SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import create_engine, text

from slotq.store import Claim, JobRepository, JobStatus
from slotq.store.migrate import downgrade, upgrade
from store_support import make_request, with_clock
from test_store_repository import sample_result

MODEL = "test-model"


def running_job(repository: JobRepository, worker: str = "w1", lease_s: float = 60.0):
    job = repository.create_job(make_request(), MODEL)
    return repository.claim_job(job.id, worker, lease_s)


def test_renewal_extends_claim_lease(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    record = running_job(store, lease_s=30.0)
    assert record.lease_expires_at == clock.now + timedelta(seconds=30)

    clock.advance(seconds=20)
    lost = store.renew_leases([Claim(record.id, record.attempts)], "w1", 30.0)

    assert lost == []
    assert store.get_job(record.id).lease_expires_at == clock.now + timedelta(seconds=30)


def test_renewal_by_other_claim_rejected(repository: JobRepository) -> None:
    record = running_job(repository)
    before = repository.get_job(record.id).lease_expires_at

    assert repository.renew_leases([Claim(record.id, record.attempts)], "w2", 600.0) == [record.id]
    assert repository.renew_leases([Claim(record.id, record.attempts + 1)], "w1", 600.0) == [record.id]
    assert repository.get_job(record.id).lease_expires_at == before


def test_live_lease_is_left_alone(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    record = running_job(store, lease_s=30.0)
    clock.advance(seconds=29)

    expired = store.requeue_expired(max_attempts=3, limit=100)

    assert expired.requeued == []
    assert expired.failed == []
    assert store.get_job(record.id).status == JobStatus.RUNNING.value


def test_expired_lease_requeues_unsent_job(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    record = running_job(store, lease_s=30.0)
    store.mark_enqueued([record.id])  # no effect: the job is running
    clock.advance(seconds=31)

    expired = store.requeue_expired(max_attempts=3, limit=100)

    assert expired.requeued == [record.id]
    job = store.get_job(record.id)
    assert (job.status, job.worker, job.lease_expires_at, job.enqueued_at) == ("queued", None, None, None)
    assert job.queued_at == record.queued_at
    assert store.unsent_jobs(clock.now, 100) == [record.id]


def test_late_result_of_lost_attempt_rejected(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    first = running_job(store, lease_s=30.0)
    clock.advance(seconds=31)
    store.requeue_expired(max_attempts=3, limit=100)
    second = store.claim_job(first.id, "w2", 30.0)

    late = store.complete_job(first.id, {**sample_result(), "text": "attempt 1"}, attempt=first.attempts)
    stored = store.complete_job(first.id, {**sample_result(), "text": "attempt 2"}, attempt=second.attempts)
    again = store.fail_job(first.id, "attempt 2 again", attempt=second.attempts)

    assert (first.attempts, second.attempts) == (1, 2)
    assert (late, stored, again) == (False, True, False)
    job = store.get_job(first.id)
    assert (job.status, job.output_text, job.worker, job.lease_expires_at) == ("succeeded", "attempt 2", "w2", None)


def test_last_attempt_expiry_fails_job(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    record = running_job(store, worker="host/123", lease_s=30.0)
    for attempt in (2, 3):
        clock.advance(seconds=31)
        assert store.requeue_expired(max_attempts=3, limit=100).requeued == [record.id]
        assert store.claim_job(record.id, "host/123", 30.0).attempts == attempt
    clock.advance(seconds=31)

    expired = store.requeue_expired(max_attempts=3, limit=100)

    assert expired.failed == [record.id]
    assert expired.requeued == []
    job = store.get_job(record.id)
    assert job.status == JobStatus.FAILED.value
    assert job.finished_at == clock.now
    assert "gave up after 3 attempts" in job.error
    assert "host/123" in job.error


def test_unsent_jobs_wait_for_grace(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    old = store.create_job(make_request("old"), MODEL)
    clock.advance(seconds=10)
    sent = store.create_job(make_request("sent"), MODEL)
    store.mark_enqueued([sent.id])
    clock.advance(seconds=10)
    new = store.create_job(make_request("new"), MODEL)

    assert store.unsent_jobs(clock.now - timedelta(seconds=5), 100) == [old.id]
    assert set(store.unsent_jobs(clock.now + timedelta(seconds=1), 100)) == {old.id, new.id}
    store.cancel_job(old.id)
    assert store.unsent_jobs(clock.now - timedelta(seconds=5), 100) == []


def test_sent_queued_jobs_oldest_first(repository: JobRepository) -> None:
    store, clock = with_clock(repository)
    jobs = [store.create_job(make_request(f"p{index}"), MODEL) for index in range(4)]
    for job in reversed(jobs):
        clock.advance(seconds=1)
        store.mark_enqueued([job.id])
    store.claim_job(jobs[3].id, "w1")
    clock.advance(seconds=1)

    assert store.count_sent_queued(clock.now) == 3
    assert store.oldest_sent_queued(clock.now, 2) == [jobs[2].id, jobs[1].id]
    assert store.count_sent_queued(clock.now - timedelta(seconds=2)) == 1


def test_mark_enqueued_many_ids(repository: JobRepository) -> None:
    jobs = [repository.create_job(make_request(f"p{index}"), MODEL) for index in range(3)]
    ids = [job.id for job in jobs] + [f"00000000-0000-0000-0000-{index:012d}" for index in range(1200)]

    assert repository.mark_enqueued(ids) == 3
    assert all(repository.get_job(job.id).enqueued_at is not None for job in jobs)


def test_migration_marks_old_queued_sent(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url)
    downgrade(url, "0004")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, status, request, slot_steps, slot_lr, generation, metadata, model_name, "
                "created_at, queued_at, attempts) VALUES (:id, :status, '{}', 1, 0.1, '{}', '{}', 'm', "
                "'2025-01-01 00:00:00', '2025-01-01 00:00:00', 0)"
            ),
            [{"id": "queued-job", "status": "queued"}, {"id": "done-job", "status": "succeeded"}],
        )
    upgrade(url)

    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, enqueued_at FROM jobs")).all())
    engine.dispose()
    assert rows["queued-job"] is not None
    assert rows["done-job"] is None
