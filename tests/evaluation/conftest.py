"""Fixtures of the evaluation tests: small data files, a tiny random model with the bundled tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from evaluation_support import build_tiny_llama
from slot_core.loading import default_model_folder

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GSM8K_FILE = SHARED_DATA / "gsm8k" / "test_dev300.jsonl"
IFEVAL_FILE = SHARED_DATA / "ifeval" / "input_dev200.jsonl"


def shared_lines(path: Path, count: int) -> list[str]:
    """Return the first ``count`` lines of a shared data file; fail naming it when it is missing."""
    if not path.is_file():
        pytest.fail(f"shared data file is missing: {path.resolve()}")
    with open(path, encoding="utf-8") as handle:
        return [next(handle) for _ in range(count)]


@pytest.fixture
def gsm8k_file(tmp_path: Path) -> Path:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(shared_lines(GSM8K_FILE, 3)), encoding="utf-8")
    return path


@pytest.fixture
def ifeval_file(tmp_path: Path) -> Path:
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(shared_lines(IFEVAL_FILE, 3)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_folder(), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory, tiny_model, tokenizer) -> Path:
    """The tiny model and the bundled tokenizer saved as a local Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: Two short validation prompts: the check runs as in production, at a fraction of the shipped set's cost.
SMALL_VALIDATION = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "日本の首都はどこですか。"}],
]


@pytest.fixture
def small_validation_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A two-prompt validation set, selected with SLOTQ_VALIDATION_PROMPTS."""
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in SMALL_VALIDATION),
                    encoding="utf-8")
    monkeypatch.setenv("SLOTQ_VALIDATION_PROMPTS", str(path))
    return path
