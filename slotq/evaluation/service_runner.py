"""Runs arms through the job API: submit each prompt as a job, then poll until it finishes.

Uses ``POST /v1/jobs`` (202 with the job id) and ``GET /v1/jobs/{id}``. The prompts of one batch
are submitted together and polled together, so up to a batch of jobs is queued at a time.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import requests

from slotq.evaluation.arms import Arm
from slotq.evaluation.errors import EvaluationError
from slotq.evaluation.generation import Generation
from slotq.logging import with_ids

if TYPE_CHECKING:
    from slotq.evaluation.datasets import EvalItem

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

#: Seconds between polls of one job.
DEFAULT_POLL_INTERVAL_S = 0.5
#: Seconds a job may take from submission to a terminal status before it counts as failed.
DEFAULT_JOB_TIMEOUT_S = 600.0
#: Seconds for one HTTP request.
REQUEST_TIMEOUT_S = 30.0


class ServiceRunner:
    """Generates by submitting jobs to a running slot-queue API."""

    mode = "service"

    def __init__(self, base_url: str, max_new_tokens: int, seed: int | None = None,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S, job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
                 session: requests.Session | None = None, api_key: str | None = None):
        """``api_key`` is sent as a bearer token; None sends ``SLOTQ_API_KEY`` when that is set."""
        from slotq.batch_client import auth_headers

        self.base_url = base_url.rstrip("/")
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.poll_interval_s = poll_interval_s
        self.job_timeout_s = job_timeout_s
        self._session = session or requests.Session()
        self._session.headers.update(auth_headers(api_key))

    @property
    def device(self) -> str:
        return f"service at {self.base_url}"

    def run(self, arm: Arm, items: list[EvalItem]) -> list[Generation]:
        """Submit one job per item and wait for all of them.

        Raises:
            EvaluationError: the API is unreachable or rejects the request (4xx), which would fail
                every prompt of the arm alike.
        """
        submitted = [(item, self._submit(arm, item), time.perf_counter()) for item in items]
        return [self._wait(arm, item, job_id, started) for item, job_id, started in submitted]

    def _submit(self, arm: Arm, item: EvalItem) -> str:
        body = {
            "messages": item.messages,
            "slot": {"steps": arm.steps} if arm.is_baseline else {"steps": arm.steps, "lr": arm.lr},
            "generation": {"max_new_tokens": self.max_new_tokens, "temperature": 0.0, "seed": self.seed},
            "metadata": {"evaluation_item": item.item_id, "evaluation_arm": arm.name},
        }
        response = self._request("post", f"{self.base_url}/v1/jobs", json=body)
        if response.status_code != 202:
            raise EvaluationError(
                f"the API at {self.base_url} rejected a job of arm {arm.name} with HTTP "
                f"{response.status_code}: {_error_text(response)}"
            )
        job_id = response.json()["id"]
        with_ids(logger, job_id=job_id, item_id=item.item_id, arm=arm.name).debug("job submitted")
        return job_id

    def _wait(self, arm: Arm, item: EvalItem, job_id: str, started: float) -> Generation:
        log = with_ids(logger, job_id=job_id, item_id=item.item_id, arm=arm.name)
        deadline = started + self.job_timeout_s
        while True:
            response = self._request("get", f"{self.base_url}/v1/jobs/{job_id}")
            if response.status_code != 200:
                raise EvaluationError(
                    f"reading job {job_id} from {self.base_url} failed with HTTP {response.status_code}: "
                    f"{_error_text(response)}"
                )
            job = response.json()
            if job["status"] in TERMINAL_STATUSES:
                return _generation(item, job, wall_ms=(time.perf_counter() - started) * 1000)
            if time.perf_counter() > deadline:
                log.warning("job timed out after %.0f s in status %s", self.job_timeout_s, job["status"])
                return Generation(item_id=item.item_id, text=None,
                                  error=f"timed out: job {job_id} still {job['status']} after {self.job_timeout_s:g} s")
            time.sleep(self.poll_interval_s)

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return self._session.request(method, url, timeout=REQUEST_TIMEOUT_S, **kwargs)
        except requests.RequestException as error:
            raise EvaluationError(f"the API at {self.base_url} is unreachable: {error}") from error


def _generation(item: EvalItem, job: dict, wall_ms: float) -> Generation:
    timings = job.get("timings_ms") or {}
    if job["status"] != "succeeded":
        reason = job.get("error") or job["status"]
        return Generation(item_id=item.item_id, text=None, error=f"job {job['id']} {job['status']}: {reason}",
                          wall_ms=wall_ms)

    result = job["result"]
    total = timings.get("total")
    return Generation(
        item_id=item.item_id,
        text=result["output_text"],
        latency_ms=total,
        compute_ms=total,
        timings_ms={key: value for key, value in timings.items()},
        delta_norm=result.get("delta_norm"),
        loss_trace=[value for value in result.get("loss_trace") or [] if value is not None],
        output_tokens=result.get("output_tokens"),
        finish_reason=result.get("finish_reason"),
        overfit=result.get("overfit"),
        validation_loss_change=result.get("validation_loss_change"),
        wall_ms=wall_ms,
    )


def _error_text(response: requests.Response) -> str:
    """Return the API's error message and details, or the start of a body that is not its envelope."""
    try:
        error = response.json()["error"]
        message, details = error["message"], error.get("details") or []
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
    problems = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in details if isinstance(d, dict))
    return f"{message} ({problems})" if problems else message
