"""The demo's table layout with Japanese text, and its reading of IFEval prompts."""

from __future__ import annotations

import json
import signal
import socket
import unicodedata
from pathlib import Path

import pytest

from slotq.demo import DemoError, DemoJob, format_table, load_ifeval_prompts
from slotq.embedded import Stack, serve, stack_environment


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(character) in ("W", "F") else 1 for character in text)


def succeeded(prompt: str, output: str) -> DemoJob:
    job = {
        "status": "succeeded",
        "result": {"output_text": output, "delta_norm": 0.12345},
        "timings_ms": {"queue_wait": 5.0, "prefill": 10.4, "optimize": 20.6, "decode": 300.0, "total": 331.0},
    }
    return DemoJob(prompt=prompt, job_id="id", job=job)


def test_table_columns_align_with_japanese() -> None:
    jobs = [
        succeeded("Explain why the sky is blue, in detail please.", "Because of Rayleigh scattering"),
        succeeded("日本の首都はどこですか？一文で答えてください。とても長い質問です。", "東京です。日本の首都は東京です。"),
        DemoJob(prompt="short", job_id="id", job={"status": "failed", "error": "PromptTooLongError: too long"}),
    ]

    lines = format_table(jobs).splitlines()

    status_column = display_width(lines[0].split("status")[0])
    for line in lines[2:]:
        status = line.split()[-1]
        assert display_width(line) - display_width(status) == status_column, lines
    assert lines[2].split()[-1] == "succeeded"
    assert lines[4].split()[-1] == "failed"
    assert "PromptTooLongError" in lines[4]
    assert "0.1235" in lines[2]
    assert " 21 " in lines[2]
    assert "…" in lines[3]


def test_table_shows_dash_for_missing_numbers() -> None:
    job = DemoJob(prompt="p", job_id="id", job={"status": "queued", "result": None, "timings_ms": {}})

    row = format_table([job]).splitlines()[2]

    assert row.split()[-1] == "queued"
    assert row.count("-") == 5


def test_ifeval_prompts_read_in_order(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    lines = [json.dumps({"key": index, "prompt": f"prompt {index} 日本"}, ensure_ascii=False) for index in range(5)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert load_ifeval_prompts(path, 3) == ["prompt 0 日本", "prompt 1 日本", "prompt 2 日本"]
    assert load_ifeval_prompts(path, 0) == []


def test_ifeval_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text('{"prompt": "ok"}\n{"no_prompt": 1}\n', encoding="utf-8")

    with pytest.raises(DemoError, match=r"input\.jsonl:2: not a JSON object with a 'prompt' field"):
        load_ifeval_prompts(path, 3)


def test_ifeval_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"

    with pytest.raises(DemoError, match="IFEval prompts not found: .*missing.jsonl"):
        load_ifeval_prompts(missing, 3)


def test_stack_environment_overrides() -> None:
    env = stack_environment({"PATH": "/bin", "SLOTQ_API_PORT": "1"}, host="0.0.0.0", port=9999, data_dir="/tmp/x")

    assert env == {"PATH": "/bin", "SLOTQ_API_PORT": "9999", "SLOTQ_API_HOST": "0.0.0.0", "SLOTQ_DATA_DIR": "/tmp/x"}


def test_stack_url_uses_loopback_for_wildcard(tmp_path: Path) -> None:
    stack = Stack({"SLOTQ_DATA_DIR": str(tmp_path), "SLOTQ_API_HOST": "0.0.0.0", "SLOTQ_API_PORT": "8123"})

    assert stack.url == "http://127.0.0.1:8123"
    assert stack.settings.embedded


def test_serve_refuses_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("SLOTQ_DATA_DIR", str(tmp_path))
    # serve() installs its own SIGINT and SIGTERM handlers; monkeypatch puts the test's back.
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]

        code = serve(host="127.0.0.1", port=port)

    assert code == 1
    assert f"cannot serve on 127.0.0.1:{port}" in caplog.text
    assert not (tmp_path / "slotq.db").exists()
