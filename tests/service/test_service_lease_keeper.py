"""The worker's lease renewal thread against a real SQLite job store."""

from __future__ import annotations

import time

from sqlalchemy import update

from slotq.store import Claim, Job, JobRepository
from store_support import make_request
from worker.lease import LeaseKeeper


def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_keeper_renews_leases(store: JobRepository) -> None:
    job = store.create_job(make_request(), "m")
    record = store.claim_job(job.id, "w1", lease_s=0.3)
    first = record.lease_expires_at

    with LeaseKeeper([Claim(job.id, record.attempts)], "w1", lease_s=0.3) as keeper:
        renewed = wait_until(lambda: store.get_job(job.id).lease_expires_at > first)
    after_exit = store.get_job(job.id).lease_expires_at
    time.sleep(0.3)

    assert renewed
    assert keeper.lost == set()
    assert store.get_job(job.id).lease_expires_at == after_exit


def test_keeper_notices_requeued_job(store: JobRepository) -> None:
    renewed = store.claim_job(store.create_job(make_request("renewed"), "m").id, "w1", lease_s=0.3)
    requeued = store.claim_job(store.create_job(make_request("requeued"), "m").id, "w1", lease_s=0.3)
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == requeued.id).values(status="queued", worker=None))

    claims = [Claim(renewed.id, renewed.attempts), Claim(requeued.id, requeued.attempts)]
    with LeaseKeeper(claims, "w1", lease_s=0.3) as keeper:
        noticed = wait_until(lambda: keeper.lost == {requeued.id})

    assert noticed
    assert store.get_job(requeued.id).lease_expires_at == requeued.lease_expires_at
    assert store.get_job(renewed.id).lease_expires_at > renewed.lease_expires_at
