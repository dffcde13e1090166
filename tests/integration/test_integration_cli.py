"""The `slotq` command line as a user runs it: `generate`, `db upgrade`, settings errors, `demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from integration_support import PROJECT_ROOT, child_environment, run_slotq


@pytest.fixture
def cli_env(tmp_path: Path, model_cache_dir: Path) -> dict[str, str]:
    return child_environment({"SLOTQ_DATA_DIR": str(tmp_path / "data"), "SLOTQ_CACHE_DIR": str(model_cache_dir)})


def test_generate_json_prints_one_object(cli_env: dict[str, str]) -> None:
    completed = run_slotq(
        ["generate", "--json", "--steps", "2", "--lr", "0.01", "--max-new-tokens", "4", "-"],
        cli_env,
        stdin="日本語で挨拶してください。",
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert set(result) >= {"text", "delta_norm", "loss_trace", "prompt_tokens", "output_tokens",
                           "finish_reason", "head_path", "timings_ms"}
    assert len(result["loss_trace"]) == 3
    assert 1 <= result["output_tokens"] <= 4
    assert set(result["timings_ms"]) == {"prefill", "optimize", "decode", "total"}
    if any(ord(character) > 127 for character in result["text"]):
        assert "\\u" not in lines[0]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--steps", "-1", "hi"], "--steps"),
        (["--lr", "0", "hi"], "--lr"),
        (["--lr", "nan", "hi"], "--lr"),
        (["--max-new-tokens", "0", "hi"], "--max-new-tokens"),
        (["--steps", "two", "hi"], "--steps"),
        (["   "], "PROMPT is empty"),
        (["--model", "/nonexistent/model", "hi"], "/nonexistent/model"),
    ],
)
def test_generate_bad_arguments_exit_2(cli_env: dict[str, str], arguments: list[str], expected: str) -> None:
    completed = run_slotq(["generate", *arguments], cli_env)

    assert completed.returncode == 2, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""


def test_db_upgrade_is_repeatable(cli_env: dict[str, str], tmp_path: Path) -> None:
    first = run_slotq(["db", "upgrade"], cli_env)
    second = run_slotq(["db", "upgrade"], cli_env)

    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'slotq.db'}", poolclass=NullPool)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert {"jobs", "alembic_version"} <= tables


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (["api"], "SLOTQ_API_PORT", "eighty"),
        (["worker"], "SLOTQ_WORKER_CONCURRENCY", "0"),
        (["worker"], "SLOTQ_TASK_TIME_LIMIT_S", "10"),
        (["serve"], "SLOTQ_DEVICE", "tpu"),
    ],
)
def test_invalid_setting_exits_2(cli_env: dict[str, str], command: list[str], variable: str, value: str) -> None:
    completed = run_slotq(command, {**cli_env, variable: value}, timeout_s=60)

    assert completed.returncode == 2, completed.stderr
    assert variable in completed.stderr
    assert "Traceback" not in completed.stderr


def test_no_command_prints_usage(cli_env: dict[str, str]) -> None:
    completed = run_slotq([], cli_env)

    assert completed.returncode == 2
    assert "usage: slotq" in completed.stderr


def test_demo_missing_ifeval_file_names_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "input_dev200.jsonl"

    completed = run_slotq(["demo", "--ifeval", str(missing)], cli_env)

    assert completed.returncode == 1
    assert str(missing) in completed.stderr
    assert "Traceback" not in completed.stderr


def test_demo_runs_real_prompts_on_embedded_stack(cli_env: dict[str, str]) -> None:
    ifeval = (PROJECT_ROOT / ".." / "shared" / "data" / "ifeval" / "input_dev200.jsonl").resolve()
    assert ifeval.is_file(), f"IFEval prompts not found: {ifeval}"

    completed = run_slotq(["demo", "--max-new-tokens", "4", "--steps", "2"], cli_env, timeout_s=480)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    header = lines[0]
    assert "δ norm" in header
    assert "optimize ms" in header
    assert "status" in header
    rows = lines[2:-1]
    assert len(rows) == 6, completed.stdout
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(row.rstrip().endswith("succeeded") for row in rows), completed.stdout
    assert any("日本の首都" in row for row in rows), completed.stdout
    assert lines[-1] == "6 of 6 jobs succeeded (steps=2, lr=0.01)"
    assert "stopping the embedded stack" in completed.stderr
