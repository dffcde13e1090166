"""The `slotq.run_job` task on a real SQLite job store with the real bundled model.

Error paths that the real engine cannot be made to hit on demand (an unexpected exception, a
soft time limit) replace `worker.tasks.execute_many` with a function that raises.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update

from slot_core import PromptTooLongError
from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import Job, JobRepository, make_engine, repository
from slotq.store.delta import decode_delta
from worker import runtime, tasks
from worker.tasks import run_job

SECRET_PROMPT = "秘密のプロンプト: do not log me"


def submit(store: JobRepository, tmp_path: Path, body: dict) -> str:
    request = parse_job_request(body, Settings(data_dir=tmp_path))
    return store.create_job(request, "api-model").id


def raise_in_execute(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def execute(*args, **kwargs):
        raise error

    monkeypatch.setattr(tasks, "execute_many", execute)


def test_run_job_stores_result(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {
        "messages": [{"role": "user", "content": "日本語で挨拶して"}],
        "slot": {"steps": 2, "lr": 0.01},
        "generation": {"max_new_tokens": 3},
    })

    run_job(job_id)

    job = store.get_job(job_id)
    delta = decode_delta(job.delta)
    assert job.status == "succeeded", job.error
    assert isinstance(job.output_text, str)
    assert 1 <= job.output_tokens <= 3
    assert job.prompt_tokens > 0
    assert job.delta_dim == len(delta) == worker_model.model.config.hidden_size
    assert math.sqrt(sum(value * value for value in delta)) == pytest.approx(job.delta_norm, rel=1e-4)
    assert len(job.loss_trace) == 3
    assert job.model_name == "bundled-for-tests"
    assert set(job.timings_ms) == {"queue_wait", "prefill", "optimize", "decode", "total"}
    assert job.attempts == 1
    assert job.worker == runtime.worker_name()
    assert job.overfit in (True, False)
    assert job.overfit_policy == "flag"
    assert job.overfit_tolerance == 0.05
    assert job.validation_loss_base > 0


def test_steps_zero_skips_overfit_check(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello", "slot": {"steps": 0}, "generation": {"max_new_tokens": 2}})

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "succeeded", job.error
    assert job.delta_norm == 0
    assert len(job.loss_trace) == 1
    assert job.overfit is None
    assert job.validation_loss is None


def test_reject_policy_fails_overfitted_job(store, worker_model, tmp_path, monkeypatch) -> None:
    # A zero tolerance flags any rise of the validation loss, and lr=1.0 for 4 steps raises it.
    monkeypatch.setenv("SLOTQ_OVERFIT_TOLERANCE", "0")
    job_id = submit(store, tmp_path, {
        "prompt": "Repeat after me: banana banana banana",
        "slot": {"steps": 4, "lr": 1.0, "overfit_policy": "reject"},
        "generation": {"max_new_tokens": 2},
    })

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "failed"
    assert job.error.startswith("delta over-fits the prompt: validation loss rose")
    assert job.overfit is True
    assert job.overfit_policy == "reject"
    assert job.validation_loss > job.validation_loss_base
    assert job.output_text is None


def test_fallback_policy_decodes_best_step(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_OVERFIT_TOLERANCE", "0")
    job_id = submit(store, tmp_path, {
        "prompt": "Repeat after me: banana banana banana",
        "slot": {"steps": 4, "lr": 1.0, "overfit_policy": "fallback"},
        "generation": {"max_new_tokens": 2},
    })

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "succeeded", job.error
    assert job.overfit is True
    assert job.overfit_policy == "fallback"
    assert job.delta_step < 4
    assert job.validation_loss_used <= job.validation_loss


def test_prompt_over_token_limit_fails_job(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_MAX_PROMPT_TOKENS", "5")
    job_id = submit(store, tmp_path, {"prompt": "This prompt has clearly more than five tokens in it."})

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "failed"
    assert "prompt" in job.error
    assert "SLOTQ_MAX_PROMPT_TOKENS" in job.error


def test_duplicate_delivery_runs_once(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello", "slot": {"steps": 0}, "generation": {"max_new_tokens": 2}})

    run_job(job_id)
    first = store.get_job(job_id)
    run_job(job_id)
    second = store.get_job(job_id)

    assert first.status == "succeeded"
    assert second.attempts == 1
    assert second.finished_at == first.finished_at
    assert second.output_text == first.output_text


def test_cancelled_job_not_run(store, worker_model, tmp_path, monkeypatch) -> None:
    raise_in_execute(monkeypatch, AssertionError("a cancelled job must not run"))
    job_id = submit(store, tmp_path, {"prompt": "Hello"})
    store.cancel_job(job_id)

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "cancelled"
    assert job.attempts == 0


@pytest.mark.parametrize("job_id", ["0b6f3c1e-0000-4000-8000-000000000000", "", None, 42])
def test_unknown_or_malformed_job_id_ignored(store, monkeypatch, job_id) -> None:
    raise_in_execute(monkeypatch, AssertionError("no job to run"))

    assert run_job(job_id) is None


def test_invalid_stored_request_fails_job(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello"})
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(request={"prompt": "Hello", "slot": {"steps": -1}}))

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "failed"
    assert "slot.steps" in job.error


def test_engine_error_fails_job(store, worker_model, tmp_path, monkeypatch) -> None:
    raise_in_execute(monkeypatch, PromptTooLongError(prompt_tokens=9000, max_new_tokens=64, context_length=8192))
    job_id = submit(store, tmp_path, {"prompt": "Hello"})

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "failed"
    assert job.error.startswith("PromptTooLongError: prompt has 9000 tokens")
    assert job.output_text is None


def test_unexpected_error_logged_with_traceback(store, worker_model, tmp_path, monkeypatch, caplog) -> None:
    raise_in_execute(monkeypatch, RuntimeError("tensor exploded"))
    job_id = submit(store, tmp_path, {"prompt": "Hello"})

    with caplog.at_level(logging.INFO, logger="worker"):
        run_job(job_id)

    job = store.get_job(job_id)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert job.status == "failed"
    assert job.error == "internal error: RuntimeError: tensor exploded"
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert f"job_id={job_id}" in errors[0].getMessage()


def test_soft_time_limit_fails_job(store, worker_model, tmp_path, monkeypatch) -> None:
    raise_in_execute(monkeypatch, SoftTimeLimitExceeded())
    job_id = submit(store, tmp_path, {"prompt": "Hello"})

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "failed"
    assert job.error.startswith("timed out: the job ran past its soft time limit")


def test_lifecycle_logged_without_prompt(store, worker_model, tmp_path, caplog) -> None:
    job_id = submit(store, tmp_path, {"prompt": SECRET_PROMPT, "slot": {"steps": 1, "lr": 0.01},
                                      "generation": {"max_new_tokens": 2}})

    with caplog.at_level(logging.INFO):
        run_job(job_id)

    job = store.get_job(job_id)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("worker")]
    assert job.status == "succeeded", job.error
    assert any(message.endswith("received") for message in messages)
    assert any("started attempt 1" in message for message in messages)
    assert any("finished:" in message for message in messages)
    assert all(f"job_id={job_id}" in message for message in messages)
    assert not any("秘密" in message for message in messages)
    assert not any(job.output_text in message for message in messages if job.output_text.strip())


def test_prompt_logged_when_enabled(store, worker_model, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_LOG_PROMPTS", "true")
    job_id = submit(store, tmp_path, {"prompt": SECRET_PROMPT, "slot": {"steps": 0}, "generation": {"max_new_tokens": 2}})

    with caplog.at_level(logging.INFO):
        run_job(job_id)

    messages = [record.getMessage() for record in caplog.records if record.name.startswith("worker")]
    assert any("秘密のプロンプト" in message for message in messages)


def test_model_loaded_once_per_process(monkeypatch, tmp_path) -> None:
    import slot_core

    loads = []

    def fake_load_model(name_or_path=None, device=None):
        loads.append((name_or_path, device))
        return object(), object()

    monkeypatch.setattr(slot_core, "load_model", fake_load_model)
    monkeypatch.setattr(runtime, "_loaded", None)
    settings = Settings(data_dir=tmp_path, device="cpu")

    first = runtime.get_model(settings)
    second = runtime.get_model(settings)

    assert first is second
    assert loads == [(None, "cpu")]
    assert first.model_name == settings.model_name
    assert first.device == "cpu"


def test_batch_job_output_checked_against_format(store, worker_model, tmp_path) -> None:
    from slotq.formats import parse_response_format
    from slotq.store.batches import BatchLine, BatchSpec

    response_format = parse_response_format({"type": "regex", "pattern": r"(?s).+"}).to_dict()
    never_matches = parse_response_format({"type": "regex", "pattern": r"^\d{40}$"}).to_dict()
    settings = Settings(data_dir=tmp_path)
    request = parse_job_request({"prompt": "Say hi.", "slot": {"steps": 0}, "generation": {"max_new_tokens": 3}}, settings)
    _, matching_ids = store.create_batch(BatchSpec(response_format=response_format),
                                         [BatchLine(1, "a", request)], "api-model")
    _, failing_ids = store.create_batch(BatchSpec(response_format=never_matches),
                                        [BatchLine(1, "b", request)], "api-model")

    run_job(matching_ids[0])
    run_job(failing_ids[0])

    matching = store.get_job(matching_ids[0])
    failing = store.get_job(failing_ids[0])
    assert matching.status == "succeeded", matching.error
    assert matching.format_ok is True
    assert matching.format_error is None
    assert failing.status == "succeeded", failing.error
    assert failing.format_ok is False
    assert failing.format_error


def test_single_job_has_no_format_check(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello", "slot": {"steps": 0}, "generation": {"max_new_tokens": 2}})

    run_job(job_id)

    job = store.get_job(job_id)
    assert job.status == "succeeded", job.error
    assert job.format_ok is None


def test_database_outage_at_claim_is_logged_not_raised(closed_port: int, monkeypatch, caplog) -> None:
    unreachable = JobRepository(make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port}/slotq"))
    monkeypatch.setattr(repository, "_default_repository", unreachable)

    run_job("00000000-0000-0000-0000-000000000001")

    assert "not claimed: database error" in caplog.text
    assert "the sweeper sends the job again" in caplog.text
