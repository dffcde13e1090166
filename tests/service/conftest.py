"""Fixtures of the worker unit tests: the bundled model loaded once, and the task's job store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from slotq.store import JobRepository, make_engine, repository
from worker import execution, runtime

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Shared with the integration tests, so the bundled model is converted once per checkout.
MODEL_CACHE_DIR = Path(os.environ.get("SLOTQ_TEST_CACHE_DIR", PROJECT_ROOT / ".cache" / "slot-queue-tests"))


@pytest.fixture(scope="session")
def bundled_model() -> runtime.LoadedModel:
    """The bundled SmolLM2-135M-Instruct on the CPU, loaded once for the session."""
    from slot_core import load_model

    model, tokenizer = load_model(device="cpu", cache_dir=MODEL_CACHE_DIR)
    return runtime.LoadedModel(model, tokenizer, model_name="bundled-for-tests", device="cpu")


@pytest.fixture(scope="session")
def session_validation_cache() -> execution.ValidationCache:
    """Validation sets of the session's model; the default set is built once (about 14 prompts)."""
    return execution.ValidationCache()


@pytest.fixture
def worker_model(bundled_model: runtime.LoadedModel, session_validation_cache: execution.ValidationCache,
                 monkeypatch: pytest.MonkeyPatch) -> runtime.LoadedModel:
    """Make the task use the session's model and validation sets."""
    monkeypatch.setattr(runtime, "get_model", lambda settings: bundled_model)
    monkeypatch.setattr(execution, "validation_cache", session_validation_cache)
    return bundled_model


@pytest.fixture
def store(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobRepository]:
    """The task's default repository, on a fresh migrated SQLite file."""
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))
    engine = make_engine(sqlite_url)
    job_repository = JobRepository(engine)
    monkeypatch.setattr(repository, "_default_repository", job_repository)
    yield job_repository
    engine.dispose()
