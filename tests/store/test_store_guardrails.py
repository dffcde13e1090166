"""Over-fitting checks and divergence notes in the job store, on real SQLite and Postgres."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from slotq.guardrails import GuardOutcome
from slotq.requests import parse_job_request
from slotq.settings import Settings
from postgres_support import private_database
from slotq.store import JobRepository, make_engine
from slotq.store import repository as repository_module
from slotq.store.migrate import current_revision, downgrade, upgrade

SETTINGS = Settings(data_dir="/nonexistent/slotq-tests")
GUARD_COLUMNS = (
    "validation_loss",
    "validation_loss_base",
    "validation_loss_change",
    "validation_loss_used",
    "overfit",
    "overfit_tolerance",
    "delta_step",
    "divergence",
)


def make_request(prompt: str = "Hello", settings: Settings = SETTINGS, **extra: object):
    return parse_job_request({"prompt": prompt, **extra}, settings)


def outcome(**changes: object) -> GuardOutcome:
    """Return a flagged outcome of the flag policy, with ``changes`` applied."""
    values = {
        "validation_loss": 3.15,
        "validation_loss_base": 3.0,
        "validation_loss_change": 0.05,
        "overfit": True,
        "policy": "flag",
        "validation_loss_used": 3.15,
        "delta_step": 5,
        "rejected": False,
        "reason": None,
    }
    values.update(changes)
    return GuardOutcome(**values)


def running_job(repository: JobRepository, **extra: object) -> str:
    job = repository.create_job(make_request(**extra), "m")
    repository.claim_job(job.id, "w")
    return job.id


def test_create_stores_default_policy(repository: JobRepository) -> None:
    job = repository.create_job(make_request(), "m")

    stored = repository.get_job(job.id)
    assert stored.overfit_policy == "flag"
    assert stored.request["slot"]["overfit_policy"] == "flag"
    for column in GUARD_COLUMNS:
        assert getattr(stored, column) is None, column


def test_create_stores_requested_policy(repository: JobRepository) -> None:
    settings = Settings(data_dir="/nonexistent/slotq-tests", overfit_policy="reject")

    from_settings = repository.create_job(make_request(settings=settings), "m")
    from_request = repository.create_job(make_request(slot={"overfit_policy": "fallback"}), "m")

    assert repository.get_job(from_settings.id).overfit_policy == "reject"
    assert repository.get_job(from_request.id).overfit_policy == "fallback"


def test_complete_stores_guard(repository: JobRepository) -> None:
    job_id = running_job(repository)
    guard = {**outcome(validation_loss=3.3, validation_loss_change=0.1).to_dict(), "tolerance": 0.05}

    assert repository.complete_job(job_id, {"text": "x", "steps_run": 5}, guard)

    stored = repository.get_job(job_id)
    assert stored.status == "succeeded"
    assert stored.validation_loss == pytest.approx(3.3)
    assert stored.validation_loss_base == pytest.approx(3.0)
    assert stored.validation_loss_change == pytest.approx(0.1)
    assert stored.validation_loss_used == pytest.approx(3.15)
    assert stored.overfit is True
    assert stored.overfit_policy == "flag"
    assert stored.overfit_tolerance == pytest.approx(0.05)
    assert stored.delta_step == 5
    assert stored.error is None


def test_complete_stores_fallback_step(repository: JobRepository) -> None:
    job_id = running_job(repository, slot={"steps": 8, "overfit_policy": "fallback"})
    guard = outcome(policy="fallback", validation_loss=4.0, validation_loss_change=1 / 3,
                    validation_loss_used=2.9, delta_step=2).to_dict()

    repository.complete_job(job_id, {"text": "x", "steps_run": 8}, guard)

    stored = repository.get_job(job_id)
    assert stored.overfit is True
    assert stored.overfit_policy == "fallback"
    assert stored.steps_run == 8
    assert stored.delta_step == 2
    assert stored.validation_loss_used == pytest.approx(2.9)
    assert stored.overfit_tolerance is None


def test_complete_not_overfit_stored_false(repository: JobRepository) -> None:
    job_id = running_job(repository)
    guard = outcome(overfit=False, validation_loss=2.9, validation_loss_change=-0.0333).to_dict()

    repository.complete_job(job_id, {"text": "x"}, guard)

    assert repository.get_job(job_id).overfit is False


def test_complete_non_finite_guard_null(repository: JobRepository) -> None:
    job_id = running_job(repository)
    guard = outcome(validation_loss=math.inf, validation_loss_change=math.inf,
                    validation_loss_used=math.nan).to_dict()

    repository.complete_job(job_id, {"text": "x"}, guard)

    stored = repository.get_job(job_id)
    assert stored.overfit is True
    assert stored.validation_loss is None
    assert stored.validation_loss_change is None
    assert stored.validation_loss_used is None
    assert stored.validation_loss_base == pytest.approx(3.0)


def test_complete_without_guard_leaves_nulls(repository: JobRepository) -> None:
    job_id = running_job(repository, slot={"overfit_policy": "reject"})

    repository.complete_job(job_id, {"text": "x"})

    stored = repository.get_job(job_id)
    assert stored.overfit is None
    assert stored.validation_loss is None
    assert stored.overfit_policy == "reject"


def test_complete_unknown_guard_key_raises(repository: JobRepository) -> None:
    job_id = running_job(repository)

    with pytest.raises(ValueError, match="unknown guard keys \\['threshold'\\]"):
        repository.complete_job(job_id, {"text": "x"}, {**outcome().to_dict(), "threshold": 0.1})

    stored = repository.get_job(job_id)
    assert stored.status == "running"
    assert stored.validation_loss is None


def test_second_complete_keeps_first_guard(repository: JobRepository) -> None:
    job_id = running_job(repository)
    repository.complete_job(job_id, {"text": "x"}, outcome().to_dict())
    first = repository.get_job(job_id)

    late = outcome(overfit=False, validation_loss=1.0, delta_step=0).to_dict()

    assert not repository.complete_job(job_id, {"text": "y"}, late)
    assert repository.get_job(job_id) == first


def test_fail_rejected_stores_guard(repository: JobRepository) -> None:
    job_id = running_job(repository, slot={"overfit_policy": "reject"})
    reason = "delta over-fits the prompt: validation loss rose from 3.0000 to 3.6000 (+20.0%)"
    guard = outcome(policy="reject", validation_loss=3.6, validation_loss_change=0.2,
                    rejected=True, reason=reason).to_dict()

    assert repository.fail_job(job_id, reason, guard)

    stored = repository.get_job(job_id)
    assert stored.status == "failed"
    assert stored.error == reason
    assert stored.overfit is True
    assert stored.overfit_policy == "reject"
    assert stored.validation_loss == pytest.approx(3.6)
    assert stored.validation_loss_change == pytest.approx(0.2)
    assert stored.output_text is None


def test_fail_unknown_guard_key_raises(repository: JobRepository) -> None:
    job_id = running_job(repository)

    with pytest.raises(ValueError, match="unknown guard keys"):
        repository.fail_job(job_id, "rejected", {"loss": 1.0})

    assert repository.get_job(job_id).status == "running"


def test_fail_finished_keeps_guard(repository: JobRepository) -> None:
    job_id = running_job(repository)
    repository.complete_job(job_id, {"text": "x"}, outcome(overfit=False).to_dict())

    assert not repository.fail_job(job_id, "late", outcome(policy="reject", rejected=True).to_dict())

    stored = repository.get_job(job_id)
    assert stored.status == "succeeded"
    assert stored.overfit is False
    assert stored.overfit_policy == "flag"


def test_divergence_note_written(repository: JobRepository) -> None:
    job_id = running_job(repository)

    repository.complete_job(job_id, {"text": "x", "diverged_at": 3, "steps_run": 2})

    stored = repository.get_job(job_id)
    assert stored.diverged_at == 3
    assert stored.divergence == (
        "optimisation stopped at step 3 because the loss or delta was not finite; "
        "the fit kept the last finite delta, from step 2 (step 0 is delta = 0)"
    )


def test_divergence_note_without_steps(repository: JobRepository) -> None:
    job_id = running_job(repository)

    repository.complete_job(job_id, {"text": "x", "diverged_at": 0})

    assert repository.get_job(job_id).divergence == (
        "optimisation stopped at step 0 because the loss or delta was not finite"
    )


def test_divergence_text_kept(repository: JobRepository) -> None:
    job_id = running_job(repository)
    note = "ステップ1で損失が無限大になりました"

    repository.complete_job(job_id, {"text": "x", "diverged_at": 1, "steps_run": 0, "divergence": note})

    assert repository.get_job(job_id).divergence == note


def test_no_divergence_no_note(repository: JobRepository) -> None:
    job_id = running_job(repository)

    repository.complete_job(job_id, {"text": "x", "diverged_at": None, "steps_run": 5})

    assert repository.get_job(job_id).divergence is None


def complete_with(repository: JobRepository, overfit: bool | None) -> str:
    job_id = running_job(repository)
    guard = None if overfit is None else outcome(overfit=overfit).to_dict()
    repository.complete_job(job_id, {"text": "x"}, guard)
    return job_id


def test_list_filters_overfit(repository: JobRepository) -> None:
    flagged = [complete_with(repository, True) for _ in range(2)]
    clean = complete_with(repository, False)
    unchecked = complete_with(repository, None)
    queued = repository.create_job(make_request(), "m").id

    def ids(**filters: object) -> list[str]:
        return [job.id for job in repository.list_jobs(**filters)[0]]

    assert ids(overfit=True) == list(reversed(flagged))
    assert ids(overfit=False) == [clean]
    assert ids() == [queued, unchecked, clean, *reversed(flagged)]
    assert ids(overfit=True, status="succeeded") == list(reversed(flagged))
    assert ids(overfit=True, status="queued") == []


def test_list_overfit_pages(repository: JobRepository) -> None:
    flagged = [complete_with(repository, True) for _ in range(3)]
    complete_with(repository, False)

    first, cursor = repository.list_jobs(overfit=True, limit=2)
    second, last_cursor = repository.list_jobs(overfit=True, limit=2, cursor=cursor)

    assert [job.id for job in first + second] == list(reversed(flagged))
    assert last_cursor is None


def test_module_functions_pass_guard(sqlite_url: str) -> None:
    repository_module.configure(sqlite_url)
    try:
        done = repository_module.create_job(make_request(), "m").id
        rejected = repository_module.create_job(make_request(), "m").id
        repository_module.claim_job(done, "w")
        repository_module.claim_job(rejected, "w")

        assert repository_module.complete_job(done, {"text": "x"}, outcome().to_dict())
        assert repository_module.fail_job(rejected, "over-fit", outcome(policy="reject").to_dict())

        assert repository_module.get_job(done).overfit is True
        assert repository_module.get_job(rejected).overfit_policy == "reject"
        assert [job.id for job in repository_module.list_jobs(overfit=True)[0]] == [rejected, done]
    finally:
        repository_module._default_repository = None


OLD_JOB_ID = "11111111-2222-3333-4444-555555555555"
INSERT_0001_JOB = """
INSERT INTO jobs (id, status, request, slot_steps, slot_lr, generation, metadata, model_name,
                  created_at, queued_at, attempts)
VALUES (:id, 'queued', '{"prompt": "x"}', 5, 0.1, '{}', '{}', 'm',
        '2025-01-01 00:00:00+00', '2025-01-01 00:00:00+00', 0)
"""


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """URL of an empty Postgres database for one test, dropped afterwards."""
    with private_database("slotq_test") as url:
        yield url


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_keeps_old_jobs(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    upgrade(url, "0001")
    engine = make_engine(url)
    # Raw SQL, because the ORM model has columns that revision 0001 lacks.
    with engine.begin() as connection:
        connection.execute(text(INSERT_0001_JOB), {"id": OLD_JOB_ID})

    upgrade(url, "0002")
    indexes = {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("jobs")}
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT overfit, overfit_policy, validation_loss, delta_step, divergence FROM jobs WHERE id = :id"),
            {"id": OLD_JOB_ID},
        ).one()

    assert current_revision(url) == "0002"
    assert indexes["ix_jobs_overfit_created_at_id"] == ["overfit", "created_at", "id"]
    assert tuple(row) == (None, None, None, None, None)

    downgrade(url, "0001")
    columns = {column["name"] for column in inspect(engine).get_columns("jobs")}
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()

    assert current_revision(url) == "0001"
    assert "overfit" not in columns
    assert "validation_loss" not in columns
    assert count == 1
    engine.dispose()
