"""Fault: a job is submitted while the broker (Redis) is down.

Real `slotq api`, `slotq worker` and `slotq sweeper` processes run on a private Redis and a
private Postgres; Redis is stopped after they have started. Checked behaviour:

- The submit is accepted with 202, not refused: the job is committed before the send, and a
  failed send leaves it queued for the sweeper. Its ``enqueued_at`` stays null while the broker
  is down, even after the sweeper has tried to send it.
- ``GET /readyz`` returns 503 with its broker check failed and its database check passed.
- Once Redis is back, the sweeper sends the job (a "never_sent" send), the worker, which
  reconnected by itself, runs it, and it succeeds with ``attempts`` 1 and one "finished" log
  line. ``enqueued_at`` is then set to a time after Redis came back.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
import requests

from fault_support import FaultStack, job_rows, log_lines, submit_job, wait_for_log, wait_status

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 180.0
SWEEP_LOG_TIMEOUT_S = 30.0
JOB = {
    "prompt": "Name one primary colour.",
    "slot": {"steps": 1, "lr": 0.01},
    "generation": {"max_new_tokens": 8, "temperature": 0},
}


def test_submit_while_broker_down_runs_later(fault_stack: FaultStack) -> None:
    service = fault_stack.service
    base_url = service.start_api()
    sweeper = service.start_sweeper()
    worker = service.start_worker("worker")

    fault_stack.redis.stop()
    job_id = submit_job(base_url, fault_stack.api_key, JOB)
    ready = requests.get(f"{base_url}/readyz", timeout=60)
    # The sweeper's send of a job queued longer than SLOTQ_ENQUEUE_GRACE_S fails while Redis is down.
    wait_for_log(sweeper, re.compile(r"errors: never_sent: sent 0 of 1 jobs"), SWEEP_LOG_TIMEOUT_S)
    while_down = job_rows(fault_stack.database_url, [job_id])[job_id]
    restarted_at = datetime.now(timezone.utc)
    fault_stack.redis.start()
    job = wait_status(service, fault_stack.api_key, job_id, ["succeeded", "failed", "cancelled"], JOB_TIMEOUT_S)
    after = job_rows(fault_stack.database_url, [job_id])[job_id]

    assert ready.status_code == 503, ready.text
    checks = ready.json()["checks"]
    assert checks["broker"]["ok"] is False, checks
    assert checks["database"]["ok"] is True, checks
    assert while_down["status"] == "queued", while_down
    assert while_down["enqueued_at"] is None, while_down

    assert job["status"] == "succeeded", f"{job}\n{service.logs()}"
    assert job["attempts"] == 1
    assert after["enqueued_at"] is not None
    assert after["enqueued_at"] >= restarted_at, (after["enqueued_at"], restarted_at)
    assert len(log_lines([worker], job_id, "finished")) == 1, service.logs()
    assert re.search(r"never_sent 1", sweeper.log_path.read_text(encoding="utf-8")), sweeper.log_tail()
