"""Fault: the job database (Postgres) stops while jobs are queued and running, then returns.

Real `slotq api`, `slotq worker` and `slotq sweeper` processes run on a private Redis and a
private Postgres. Several jobs are submitted to one worker that runs one job at a time. Once the
first job runs, Postgres is stopped with ``pg_ctl stop -m fast``. It stays down until the worker
has taken every task message and failed each one on the database. The running job could not
store its result, and the others could not be claimed. Checked behaviour:

- While the database is down, ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` return 503 with the
  error code ``database_unavailable``, a message naming the database, a request id and
  ``Retry-After``; no response carries a traceback, and the refused submit stores no job.
- ``GET /readyz`` returns 503 with its database check failed and its broker check passed, and
  its error message names the database.
- The sweeper keeps running through the outage and logs its failed passes.
- After the database returns, no accepted job is lost or run twice. The job whose result was
  not stored runs again: its lease passes, the sweeper queues it, and it succeeds with
  ``attempts`` 2. The jobs that were never claimed lost their messages, which the sweeper sends
  again; they succeed with ``attempts`` 1. Each job has exactly one "finished" log line.
- A job submitted after the database returns is accepted and succeeds.
"""

from __future__ import annotations

import re

import pytest
import requests

from fault_support import FaultStack, job_ids, log_lines, submit_job, wait_for_log, wait_status, wait_until
from integration_support import auth

pytestmark = pytest.mark.integration

JOBS_BEFORE = 3
JOB_TIMEOUT_S = 180.0
OUTAGE_LOG_TIMEOUT_S = 120.0
#: Celery's log line for a task that raised a database error, here from a claim or a result.
#: The worker's line for a task that met the database outage: the running job could not store its
#: outcome, and each later task could not claim its job.
TASK_DATABASE_ERROR = re.compile(r"(outcome not stored|not claimed): database error")
#: The first job counts for all 100 tokens (seconds of decoding), so it still runs when the
#: database stops; the other jobs are short.
LONG_JOB = {
    "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
    "slot": {"steps": 1, "lr": 0.01},
    "generation": {"max_new_tokens": 100, "temperature": 0},
}
SHORT_JOB = {
    "prompt": "Name one primary colour.",
    "slot": {"steps": 1, "lr": 0.01},
    "generation": {"max_new_tokens": 8, "temperature": 0},
}


def assert_database_unavailable(response: requests.Response) -> None:
    """Check the 503 response to a `/v1` request made while the database is down."""
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers.get("Retry-After"), response.headers
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert error["code"] == "database_unavailable", error
    assert "database" in error["message"], error
    assert error["request_id"], error


def test_database_outage_loses_no_job(fault_stack: FaultStack) -> None:
    service = fault_stack.service
    base_url = service.start_api()
    sweeper = service.start_sweeper()
    worker = service.start_worker("worker")
    before = [submit_job(base_url, fault_stack.api_key, LONG_JOB if index == 0 else SHORT_JOB)
              for index in range(JOBS_BEFORE)]
    wait_status(service, fault_stack.api_key, before[0], ["running"], JOB_TIMEOUT_S)

    fault_stack.postgres.stop()
    submit = requests.post(f"{base_url}/v1/jobs", json=SHORT_JOB, headers=auth(fault_stack.api_key), timeout=60)
    read = requests.get(f"{base_url}/v1/jobs/{before[0]}", headers=auth(fault_stack.api_key), timeout=60)
    ready = requests.get(f"{base_url}/readyz", timeout=60)
    wait_for_log(sweeper, re.compile("sweep pass failed: OperationalError"), OUTAGE_LOG_TIMEOUT_S)
    wait_for_log(worker, TASK_DATABASE_ERROR, OUTAGE_LOG_TIMEOUT_S, count=JOBS_BEFORE)
    fault_stack.postgres.start()

    wait_until(lambda: requests.get(f"{base_url}/readyz", timeout=60).status_code == 200, JOB_TIMEOUT_S,
               "/readyz to return 200 after Postgres started again", service.logs)
    jobs = {job_id: wait_status(service, fault_stack.api_key, job_id, ["succeeded", "failed", "cancelled"],
                                JOB_TIMEOUT_S)
            for job_id in before}
    new_id = submit_job(base_url, fault_stack.api_key, SHORT_JOB)
    new_job = wait_status(service, fault_stack.api_key, new_id, ["succeeded", "failed", "cancelled"], JOB_TIMEOUT_S)

    assert_database_unavailable(submit)
    assert_database_unavailable(read)
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["checks"]["database"]["ok"] is False, body
    assert body["checks"]["broker"]["ok"] is True, body
    assert body["error"]["code"] == "not_ready", body
    assert "database" in body["error"]["message"], body

    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", f"{job}\n{service.logs()}"
        assert len(log_lines([worker], job_id, "finished")) == 1, service.logs()
    assert jobs[before[0]]["attempts"] == 2, jobs[before[0]]
    assert [jobs[job_id]["attempts"] for job_id in before[1:]] == [1] * (JOBS_BEFORE - 1)
    assert new_job["status"] == "succeeded", f"{new_job}\n{service.logs()}"
    assert new_job["attempts"] == 1
    assert sorted(job_ids(fault_stack.database_url)) == sorted(before + [new_id]), "the 503 submit stored a job"
