"""Fault: a worker is killed with SIGKILL in the middle of a job.

Real `slotq api`, `slotq worker` and `slotq sweeper` processes run on a private Redis and a
private Postgres. Checked behaviour:

- A job caught running on the first worker stays running when that worker's whole process group
  dies, because nothing acknowledges or fails it.
- The sweeper queues it again once its lease (``SLOTQ_LEASE_S`` = 5 s) has passed, without
  waiting for the broker's visibility timeout (2 h by default), and sends it a new message.
- A second worker runs it: the job succeeds with ``attempts`` 2, on the second worker.
- Its outcome is stored once: across both workers' logs there is exactly one "finished" line for
  the job, from the second worker, and the stored result is the same after the second worker
  and the sweeper have stopped.
"""

from __future__ import annotations

import pytest

from fault_support import FaultStack, job_rows, kill_group, log_lines, submit_job, wait_for_exit, wait_status
from integration_support import descendants

pytestmark = pytest.mark.integration

#: Counting continues for all 100 tokens without reaching an end-of-text token, so the job runs
#: for seconds and a poll every 0.2 s catches it running.
LONG_JOB = {
    "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
    "slot": {"steps": 2, "lr": 0.01},
    "generation": {"max_new_tokens": 100, "temperature": 0},
}
JOB_TIMEOUT_S = 180.0
#: Seconds the pool processes get to disappear after the SIGKILL of their process group.
POOL_EXIT_TIMEOUT_S = 10.0


def test_killed_worker_job_runs_once_more(fault_stack: FaultStack) -> None:
    service = fault_stack.service
    service.start_api()
    sweeper = service.start_sweeper()
    first = service.start_worker("worker-1")
    job_id = submit_job(service.base_url, fault_stack.api_key, LONG_JOB)

    wait_status(service, fault_stack.api_key, job_id, ["running"], JOB_TIMEOUT_S)
    pool_processes = descendants(first)
    kill_group(first)
    survivors = wait_for_exit(pool_processes, POOL_EXIT_TIMEOUT_S)
    at_kill = job_rows(fault_stack.database_url, [job_id])[job_id]
    second = service.start_worker("worker-2")
    job = wait_status(service, fault_stack.api_key, job_id, ["succeeded", "failed", "cancelled"], JOB_TIMEOUT_S)
    row = job_rows(fault_stack.database_url, [job_id])[job_id]

    assert pool_processes, "the worker had no pool process to kill"
    assert survivors == [], f"pool processes outlived the SIGKILL of their process group: {survivors}"
    assert at_kill["status"] == "running", f"the job finished before the kill; make it longer: {at_kill}"
    assert at_kill["attempts"] == 1
    assert job["status"] == "succeeded", f"{job}\n{service.logs()}"
    assert job["attempts"] == 2
    assert job["error"] is None
    assert job["worker"] != at_kill["worker"]
    assert job["result"]["output_text"] == row["output_text"]
    assert row["lease_expires_at"] is None

    assert len(log_lines([first], job_id, "started attempt 1")) == 1, first.log_tail()
    assert log_lines([first], job_id, "finished") == [], first.log_tail()
    assert len(log_lines([second], job_id, "started attempt 2")) == 1, second.log_tail()
    assert len(log_lines([first, second], job_id, "finished")) == 1, service.logs()
    assert "lease_expired 1" in sweeper.log_path.read_text(encoding="utf-8"), sweeper.log_tail()

    # Once every process that could write has stopped, the stored outcome is still the first one.
    service.stop_all()
    assert job_rows(fault_stack.database_url, [job_id])[job_id] == row
