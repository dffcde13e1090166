"""Guardrails at worker level: warnings for flagged jobs and divergence past the API's checks."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import JobRepository
from worker import execution
from worker.tasks import run_job


def submit(store: JobRepository, tmp_path: Path, body: dict) -> str:
    return store.create_job(parse_job_request(body, Settings(data_dir=tmp_path)), "api-model").id


def test_flagged_job_logs_warning(store, worker_model, tmp_path, caplog) -> None:
    job_id = submit(store, tmp_path, {
        "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
        "slot": {"steps": 20, "lr": 1.0},
        "generation": {"max_new_tokens": 4},
    })

    with caplog.at_level(logging.WARNING, logger="worker"):
        run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "succeeded", job.error
    assert job.overfit is True
    warnings = [record for record in caplog.records if "overfit" in record.getMessage()]
    assert warnings, [record.getMessage() for record in caplog.records]
    assert job_id in warnings[0].getMessage() or getattr(warnings[0], "job_id", None) == job_id


def test_forced_divergence_gives_finite_output(store, worker_model, tmp_path, monkeypatch) -> None:
    job_id = submit(store, tmp_path, {"prompt": "The museum opens at", "slot": {"steps": 5, "lr": 0.5},
                                      "generation": {"max_new_tokens": 6}})
    original = execution._engine_request

    def absurd_learning_rate(request):
        # Past both the API's and the worker's caps: the engine itself gets lr = 1e38.
        from slot_core import GenerationRequest, SlotConfig

        engine_request = original(request)
        return GenerationRequest(engine_request.prompt, SlotConfig(steps=5, lr=1e38), engine_request.decoding)

    monkeypatch.setattr(execution, "_engine_request", absurd_learning_rate)
    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "succeeded", job.error
    assert job.diverged_at is not None
    assert "not finite" in job.divergence
    assert math.isfinite(job.delta_norm)
    assert all(math.isfinite(value) for value in job.loss_trace)
    assert job.output_tokens >= 1
