"""Fault: the broker (Redis without persistence) crashes and restarts in the middle of a batch.

Real `slotq api`, `slotq worker` and `slotq sweeper` processes run on a private Redis and a
private Postgres. One worker runs one job at a time. After the first of several jobs has
finished, Redis is killed with SIGKILL and started again on the same port, so the task messages
of the jobs still waiting are lost. Checked behaviour:

- Every job still completes: the sweeper finds fewer messages in the broker than queued jobs
  that were sent, and sends those jobs again.
- Every job completes exactly once: it succeeds with ``attempts`` 1, and the worker log has one
  "started attempt" line and one "finished" line for it. Duplicate messages are allowed, and
  they find the job claimed and change nothing.
- Jobs submitted after the restart complete on the same worker process, which reconnected to
  the restarted broker by itself.
"""

from __future__ import annotations

import re

import pytest

from fault_support import FaultStack, job_rows, log_lines, submit_job, wait_status

pytestmark = pytest.mark.integration

#: Jobs submitted before the crash: the first one finishes, the others wait in the broker.
JOBS_BEFORE = 4
JOBS_AFTER = 2
JOB_TIMEOUT_S = 180.0


def job_body(index: int) -> dict:
    """Return a short job whose prompt names its position in the batch."""
    return {
        "prompt": f"Job {index}: count from one to ten.",
        "slot": {"steps": 1, "lr": 0.01},
        "generation": {"max_new_tokens": 24, "temperature": 0},
    }


def test_broker_restart_loses_no_job(fault_stack: FaultStack) -> None:
    service = fault_stack.service
    service.start_api()
    sweeper = service.start_sweeper()
    worker = service.start_worker("worker")
    before = [submit_job(service.base_url, fault_stack.api_key, job_body(index)) for index in range(JOBS_BEFORE)]

    wait_status(service, fault_stack.api_key, before[0], ["succeeded"], JOB_TIMEOUT_S)
    fault_stack.redis.crash()
    sweeper_log_at_crash = sweeper.log_path.stat().st_size
    at_crash = job_rows(fault_stack.database_url, before)
    fault_stack.redis.start()
    after = [submit_job(service.base_url, fault_stack.api_key, job_body(JOBS_BEFORE + index))
             for index in range(JOBS_AFTER)]
    jobs = {job_id: wait_status(service, fault_stack.api_key, job_id, ["succeeded", "failed", "cancelled"],
                                JOB_TIMEOUT_S)
            for job_id in before + after}

    waiting = [job_id for job_id, row in at_crash.items() if row["status"] == "queued"]
    assert waiting, f"no job was waiting when Redis crashed, so no message was lost: {at_crash}"
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", f"{job}\n{service.logs()}"
        assert job["attempts"] == 1, job
        assert len(log_lines([worker], job_id, "started attempt 1")) == 1, service.logs()
        assert len(log_lines([worker], job_id, "finished")) == 1, service.logs()
        assert log_lines([worker], job_id, "started attempt 2") == [], service.logs()

    assert worker.process.poll() is None, worker.log_tail()
    assert [started.name for started in service.processes].count("worker") == 1
    assert len({job["worker"] for job in jobs.values()}) == 1, "another pool process ran some of the jobs"
    worker_log = worker.log_path.read_text(encoding="utf-8")
    assert len(re.findall(r"Connected to redis://", worker_log)) >= 2, "the worker never reconnected"
    sweeps_after_crash = sweeper.log_path.read_bytes()[sweeper_log_at_crash:].decode("utf-8")
    assert re.search(r"message_lost [1-9]", sweeps_after_crash), sweeper.log_tail()
