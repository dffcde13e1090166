"""The batch client functions and ``slotq batch`` commands against the API served over real HTTP."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from slotq.batch_client import (
    BatchClientError,
    add_batch_commands,
    batch_status,
    download_results,
    submit_batch,
    wait_for_batch,
)
from slotq.store import JobRepository


def write_batch(path: Path, count: int, header: dict | None = None) -> Path:
    rows = [json.dumps(header, ensure_ascii=False)] if header else []
    rows += [json.dumps({"custom_id": f"注文-{index}", "request": {"prompt": f"メール{index}"}}, ensure_ascii=False) for index in range(count)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def finish_all(repository: JobRepository, job_ids: list[str]) -> None:
    for job_id in job_ids:
        repository.claim_job(job_id, "test-worker")
        repository.complete_job(job_id, {"text": f"結果 {job_id[:4]}"})


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slotq")
    add_batch_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_submit_with_japanese_file_name(server_url: str, tmp_path: Path, enqueue) -> None:
    path = write_batch(tmp_path / "夜間の注文.jsonl", 3)

    accepted = submit_batch(server_url, path, progress=False)

    assert accepted["line_count"] == 3
    # The server sends the messages after the response is written.
    deadline = time.monotonic() + 10
    while len(enqueue.job_ids) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(enqueue.job_ids) == 3
    assert batch_status(server_url, accepted["id"])["input_file_name"] == "夜間の注文.jsonl"


def test_submit_errors_list_lines(server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"custom_id": "a", "request": {"prompt": ""}}\nnot json\n', encoding="utf-8")

    with pytest.raises(BatchClientError) as excinfo:
        submit_batch(server_url, path, progress=False)

    message = str(excinfo.value)
    assert "422" in message
    assert "line 1 (a): request.prompt" in message
    assert "line 2: line" in message


def test_submit_skip_invalid(server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"custom_id": "a", "request": {"prompt": "ok"}}\nnot json\n', encoding="utf-8")

    accepted = submit_batch(server_url, path, skip_invalid=True, progress=False)

    assert (accepted["line_count"], accepted["skipped_count"]) == (1, 1)


def test_submit_missing_file(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(BatchClientError, match="cannot read"):
        submit_batch(server_url, tmp_path / "none.jsonl", progress=False)


def test_unreachable_server(closed_port: int, tmp_path: Path) -> None:
    with pytest.raises(BatchClientError, match="failed"):
        batch_status(f"http://127.0.0.1:{closed_port}", "00000000-0000-0000-0000-000000000000")


def test_wait_until_completed(server_url: str, tmp_path: Path, postgres_repository: JobRepository) -> None:
    accepted = submit_batch(server_url, write_batch(tmp_path / "b.jsonl", 4), progress=False)
    job_ids = postgres_repository.batch_job_ids(accepted["id"])
    polls = []

    def worker_step(seconds: float) -> None:
        polls.append(seconds)
        finish_all(postgres_repository, job_ids[len(polls) - 1 : len(polls)])

    final = wait_for_batch(server_url, accepted["id"], poll_interval_s=0.5, progress=False, sleep=worker_step)

    assert final["status"] == "completed"
    assert final["finished"] == 4
    assert polls == [0.5] * 4


def test_wait_times_out(server_url: str, tmp_path: Path) -> None:
    accepted = submit_batch(server_url, write_batch(tmp_path / "b.jsonl", 1), progress=False)

    with pytest.raises(BatchClientError, match="still queued"):
        wait_for_batch(server_url, accepted["id"], poll_interval_s=0.01, max_wait_s=0.05, progress=False)


def test_download_resumes_partial_file(server_url: str, tmp_path: Path, postgres_repository: JobRepository) -> None:
    accepted = submit_batch(server_url, write_batch(tmp_path / "b.jsonl", 6, header={"batch": {}}), progress=False)
    job_ids = postgres_repository.batch_job_ids(accepted["id"])
    finish_all(postgres_repository, job_ids[:3])
    output = tmp_path / "結果.jsonl"

    first = download_results(server_url, accepted["id"], output, progress=False)

    assert (first.new_lines, first.last_line, first.complete) == (3, 4, False)

    # Simulate a download cut inside the third line.
    content = output.read_bytes()
    output.write_bytes(content[: content.rindex(b"\n", 0, len(content) - 1) + 10])
    finish_all(postgres_repository, job_ids[3:])

    second = download_results(server_url, accepted["id"], output, progress=False)

    lines = [json.loads(text) for text in output.read_text(encoding="utf-8").splitlines()]
    assert (second.kept_lines, second.new_lines, second.complete) == (2, 4, True)
    assert [item["line"] for item in lines] == [2, 3, 4, 5, 6, 7]
    assert [item["custom_id"] for item in lines] == [f"注文-{index}" for index in range(6)]
    assert "注文-0".encode() in output.read_bytes()


def test_download_rejects_foreign_file(server_url: str, tmp_path: Path) -> None:
    output = tmp_path / "notes.txt"
    output.write_text("hello\n", encoding="utf-8")

    with pytest.raises(BatchClientError, match="not a results line"):
        download_results(server_url, "00000000-0000-0000-0000-000000000000", output, progress=False)


def test_commands_end_to_end(server_url: str, tmp_path: Path, postgres_repository: JobRepository, capsys) -> None:
    path = write_batch(tmp_path / "注文.jsonl", 2)

    assert run_command(["batch", "submit", str(path), "--url", server_url, "--no-progress"]) == 0
    batch_id = capsys.readouterr().out.strip()
    finish_all(postgres_repository, postgres_repository.batch_job_ids(batch_id))

    assert run_command(["batch", "status", batch_id, "--url", server_url]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    output = tmp_path / "out.jsonl"
    assert run_command(["batch", "results", batch_id, "-o", str(output), "--url", server_url, "--no-progress"]) == 0
    assert len(output.read_text(encoding="utf-8").splitlines()) == 2
    assert run_command(["batch", "status", "00000000-0000-0000-0000-000000000000", "--url", server_url]) == 1
    assert "batch_not_found" in capsys.readouterr().err


def test_submit_wait_command(server_url: str, tmp_path: Path, postgres_repository: JobRepository, capsys) -> None:
    path = write_batch(tmp_path / "w.jsonl", 2)
    stop = threading.Event()

    def fake_worker() -> None:
        while not stop.is_set():
            for batch_id in {job.batch_id for job in postgres_repository.list_jobs(status="queued")[0]}:
                finish_all(postgres_repository, postgres_repository.batch_job_ids(batch_id, status="queued"))
            stop.wait(0.05)

    thread = threading.Thread(target=fake_worker, daemon=True)
    thread.start()
    try:
        code = run_command(["batch", "submit", str(path), "--wait", "--poll-interval", "0.1", "--url", server_url, "--no-progress"])
    finally:
        stop.set()
        thread.join(timeout=10)

    assert code == 0
    assert "completed" in capsys.readouterr().err


def test_explicit_key_wins_over_environment(server_url: str, tmp_path: Path, api_key: str, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_API_KEY", "sq_" + "x" * 43)

    accepted = submit_batch(server_url, write_batch(tmp_path / "b.jsonl", 1), progress=False, api_key=api_key)

    assert batch_status(server_url, accepted["id"], api_key=api_key)["line_count"] == 1


def test_missing_key_names_the_fix(server_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLOTQ_API_KEY")

    with pytest.raises(BatchClientError) as raised:
        submit_batch(server_url, write_batch(tmp_path / "b.jsonl", 1), progress=False)

    assert "401 unauthorized" in str(raised.value)
    assert "SLOTQ_API_KEY" in str(raised.value)
