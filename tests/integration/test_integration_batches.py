"""Batches on Postgres and Redis: `slotq api` under gunicorn, one real `slotq worker` with the
bundled model, and the `slotq batch` commands.

The upload mixes valid lines with invalid ones (a bad field value, a duplicate custom_id, a line
that is not JSON). The format expectations rest on two facts about the bundled tokenizer, which
the ``tokenizer_facts`` fixture checks first:

- No token decodes to text with whitespace inside it once stripped, so the output of a line
  with ``max_new_tokens`` 1 always matches the regex ``\\S*``. The greedy 8-token outputs of the
  sentence lines contain spaces, and the test checks that at least one of them fails the regex.
- No token decodes to more than one ASCII digit, so an output of at most 12 tokens cannot
  contain a JSON string of 13 digits, and every such output fails `DIGITS_SCHEMA`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from integration_support import (
    Started,
    auth,
    create_api_key,
    free_port,
    run_slotq,
    service_environment,
    start_slotq,
    stop,
    wait_ready,
)
from slot_core.loading import default_model_folder

pytestmark = pytest.mark.integration

JSONL = "application/x-ndjson"
#: Seconds a batch may take to finish, model loading in the worker included.
BATCH_TIMEOUT_S = 300.0
#: Seconds between status polls, short so that a cancel lands while jobs are still queued.
POLL_INTERVAL_S = 0.1

NO_WHITESPACE = r"\S*"
REGEX_MISMATCH = "output does not match the pattern as a whole"
DIGITS_SCHEMA = {"type": "string", "pattern": "^[0-9]{13}$"}
SLOT = {"steps": 1, "lr": 0.01}

# Physical lines of the mixed upload. Line 1 is the batch header and line 5 is blank.
ONE_TOKEN_LINES = {2: "単語-東京", 9: "word-colour"}
SENTENCE_LINES = {3: "days", 6: "count", 11: "文-富士山", 12: "sentence-sea"}
VALID_LINES = dict(sorted({**ONE_TOKEN_LINES, **SENTENCE_LINES}.items()))
INVALID_LINES = {4: ("bad-steps", "request.slot.steps"), 7: ("単語-東京", "custom_id"), 8: (None, "line"),
                 10: ("不正-トークン数", "request.generation.max_new_tokens")}

CANCEL_LINE_COUNT = 16
CANCEL_PROMPTS = ["Name a fruit.", "果物の名前を一つ挙げてください。", "Name a river.", "川の名前を一つ挙げてください。"]


def mixed_upload() -> bytes:
    """Return the JSONL upload with valid, invalid and blank lines at the line numbers of the constants above."""
    header = {"batch": {
        "defaults": {"slot": SLOT, "generation": {"max_new_tokens": 1}},
        "response_format": {"type": "regex", "pattern": NO_WHITESPACE},
        "metadata": {"案件": "夜間バッチ"},
    }}
    sentence = {"max_new_tokens": 8}
    lines = [
        header,
        {"custom_id": "単語-東京", "request": {"messages": [{"role": "user", "content": "日本の首都はどこですか？"}]}},
        {"custom_id": "days", "request": {"prompt": "Monday, Tuesday, Wednesday,", "generation": sentence}},
        {"custom_id": "bad-steps", "request": {"prompt": "Say hi.", "slot": {"steps": -1}}},
        "",
        {"custom_id": "count", "request": {"prompt": "1, 2, 3, 4, 5,", "generation": sentence}},
        {"custom_id": "単語-東京", "request": {"prompt": "重複した custom_id です。"}},
        '{"custom_id": "broken", "request": {"prompt": "unterminated',
        {"custom_id": "word-colour", "request": {"prompt": "Name one primary colour."}},
        {"custom_id": "不正-トークン数", "request": {"prompt": "こんにちは", "generation": {"max_new_tokens": 0}}},
        {"custom_id": "文-富士山",
         "request": {"messages": [{"role": "user", "content": "富士山について一文で説明してください。"}], "generation": sentence}},
        {"custom_id": "sentence-sea", "request": {"prompt": "The sea is", "generation": sentence}},
    ]
    text_lines = [item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in lines]
    return ("\n".join(text_lines) + "\n").encode("utf-8")


def cancel_upload() -> bytes:
    """Return a JSONL upload of `CANCEL_LINE_COUNT` short jobs under `DIGITS_SCHEMA`."""
    header = {"batch": {
        "defaults": {"slot": SLOT, "generation": {"max_new_tokens": 4}},
        "response_format": {"type": "json_schema", "schema": DIGITS_SCHEMA},
    }}
    lines = [header] + [
        {"custom_id": f"取消-{index:02d}", "request": {"prompt": CANCEL_PROMPTS[index % len(CANCEL_PROMPTS)]}}
        for index in range(1, CANCEL_LINE_COUNT + 1)
    ]
    return ("\n".join(json.dumps(item, ensure_ascii=False) for item in lines) + "\n").encode("utf-8")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-logs")


@pytest.fixture(scope="module")
def tokenizer_facts(model_cache_dir: Path) -> None:
    """Check the tokenizer facts of the module docstring on every token, decoded as the worker decodes outputs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_folder(model_cache_dir), local_files_only=True)
    texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))], skip_special_tokens=True)
    assert not [text for text in texts if re.search(r"\s", text.strip())], "a token has whitespace inside it"
    assert max(len(re.findall(r"[0-9]", text)) for text in texts) == 1, "a token has more than one digit"


@pytest.fixture(scope="module")
def service_env(integration_database_url: str, integration_broker: dict, model_cache_dir: Path, log_dir: Path) -> dict[str, str]:
    """Environment of every process of this module, migrated database included.

    Worker batches of 3 jobs run the 6 valid lines of the mixed upload in 2 rounds and a 16-line
    batch in 6, so a cancel can land midway.
    """
    broker = {**integration_broker, "queue": integration_broker["queue"] + "-batches"}
    return service_environment(
        integration_database_url, broker, model_cache_dir, log_dir, SLOTQ_WORKER_BATCH_SIZE="3"
    )


@pytest.fixture(scope="module")
def api_key(service_env: dict[str, str]) -> str:
    """Key of a tenant that only this module uses, so its job list starts empty."""
    return create_api_key(service_env, "integration-batches")


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, list[Started]]]:
    """Start a `slotq worker` and a `slotq api` on a free port. Yields the API's base URL and both processes.

    The worker starts first, so that it loads the model while the first tests run.
    """
    worker = start_slotq("worker", ["worker"], service_env, log_dir)
    port = free_port()
    api = start_slotq("api", ["api"], {**service_env, "SLOTQ_API_PORT": str(port)}, log_dir)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, [api, worker])
        yield base_url, [api, worker]
    finally:
        stop(api)
        stop(worker)


@pytest.fixture(scope="module")
def cli_env(service_env: dict[str, str], api_key: str) -> dict[str, str]:
    return {**service_env, "SLOTQ_API_KEY": api_key}


def post_batch(base_url: str, body: bytes, api_key: str, query: str = "") -> requests.Response:
    return requests.post(f"{base_url}/v1/batches{query}", data=body, headers={**auth(api_key), "Content-Type": JSONL},
                         timeout=60)


def batch_status(base_url: str, batch_id: str, api_key: str) -> dict[str, Any]:
    response = requests.get(f"{base_url}/v1/batches/{batch_id}", headers=auth(api_key), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def get_results(base_url: str, batch_id: str, api_key: str, after_line: int | None = None) -> requests.Response:
    params = {} if after_line is None else {"after_line": after_line}
    response = requests.get(f"{base_url}/v1/batches/{batch_id}/results", params=params, headers=auth(api_key), timeout=60)
    assert response.status_code == 200, response.text
    return response


def parse_lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


def wait_batch_done(base_url: str, batch_id: str, api_key: str, started: list[Started]) -> dict[str, Any]:
    """Poll until the batch is completed or cancelled and return its status."""
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = batch_status(base_url, batch_id, api_key)
        if status["status"] in ("completed", "cancelled"):
            return status
        time.sleep(POLL_INTERVAL_S * 5)
    raise AssertionError(f"batch {batch_id} still {status.get('status')} after {BATCH_TIMEOUT_S:.0f} s: "
                         f"{status.get('counts')}\n{logs(started)}")


def logs(started: list[Started]) -> str:
    return "\n".join(f"--- {item.name}\n{item.log_tail()}" for item in started)


def table_rows(database_url: str, table: str) -> int:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def batch_jobs(database_url: str, batch_id: str) -> list[dict[str, Any]]:
    """Return line_number, custom_id, status and output_text of the batch's job rows in line order."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT line_number, custom_id, status, output_text FROM jobs "
                     "WHERE batch_id = :batch_id ORDER BY line_number"),
                {"batch_id": batch_id},
            ).mappings().all()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def mixed_batch(stack: tuple[str, list[Started]], api_key: str) -> dict[str, Any]:
    """Submit the mixed upload with skip_invalid=true and download its results while it runs.

    Each poll downloads the lines after the last one received so far, as a resuming client
    does, so ``incremental`` is the whole download assembled from partial ones.
    """
    base_url, started = stack
    response = post_batch(base_url, mixed_upload(), api_key, "?skip_invalid=true&file_name=夜間.jsonl")
    assert response.status_code == 202, response.text
    accepted = response.json()

    incremental = b""
    last_line = 0
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while True:
        done = batch_status(base_url, accepted["id"], api_key)["status"] == "completed"
        part = get_results(base_url, accepted["id"], api_key, after_line=last_line)
        incremental += part.content
        last_line = int(part.headers["X-Slotq-Last-Line"])
        if done and part.headers["X-Slotq-Results-Complete"] == "true":
            break
        assert time.monotonic() < deadline, f"batch {accepted['id']} did not complete\n{logs(started)}"
        time.sleep(POLL_INTERVAL_S * 5)

    return {"accepted": accepted, "incremental": incremental}


def test_invalid_lines_reject_whole_upload(stack: tuple[str, list[Started]], api_key: str, cli_env: dict[str, str],
                                           integration_database_url: str, tmp_path: Path) -> None:
    base_url, _ = stack
    upload = tmp_path / "夜間.jsonl"
    upload.write_bytes(mixed_upload())
    batches_before = table_rows(integration_database_url, "batches")
    jobs_before = table_rows(integration_database_url, "jobs")

    response = post_batch(base_url, mixed_upload(), api_key)
    submitted = run_slotq(["batch", "submit", str(upload), "--url", base_url, "--no-progress"], cli_env)
    listed = requests.get(f"{base_url}/v1/jobs", headers=auth(api_key), timeout=30)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["message"].startswith(f"{len(INVALID_LINES)} of {len(VALID_LINES) + len(INVALID_LINES)} lines are invalid")
    reported = {detail["line"]: (detail["custom_id"], detail["field"]) for detail in error["details"]}
    assert reported == INVALID_LINES
    duplicate = next(detail for detail in error["details"] if detail["line"] == 7)
    assert "line 2 uses it already" in duplicate["message"]
    assert "不正-トークン数" in response.content.decode("utf-8")

    assert submitted.returncode == 1, submitted.stderr
    assert submitted.stdout == ""
    for line, (custom_id, _) in INVALID_LINES.items():
        where = f"line {line} ({custom_id})" if custom_id else f"line {line}: line is not valid JSON"
        assert where in submitted.stderr, submitted.stderr
    assert "--skip-invalid" in submitted.stderr

    assert table_rows(integration_database_url, "batches") == batches_before
    assert table_rows(integration_database_url, "jobs") == jobs_before
    assert listed.status_code == 200, listed.text
    assert listed.json()["jobs"] == []


def test_skip_invalid_counts_and_formats(stack: tuple[str, list[Started]], api_key: str, mixed_batch: dict[str, Any],
                                         integration_database_url: str, tokenizer_facts: None) -> None:
    base_url, _ = stack
    accepted = mixed_batch["accepted"]
    batch_id = accepted["id"]

    status = batch_status(base_url, batch_id, api_key)
    download = get_results(base_url, batch_id, api_key)
    results = parse_lines(download.content)
    rows = batch_jobs(integration_database_url, batch_id)

    assert (accepted["line_count"], accepted["skipped_count"]) == (len(VALID_LINES), len(INVALID_LINES))
    skipped = {item["line"]: (item["custom_id"], item["errors"][0]["field"]) for item in accepted["skipped"]}
    assert skipped == INVALID_LINES
    assert [(row["line_number"], row["custom_id"]) for row in rows] == list(VALID_LINES.items())

    assert status["status"] == "completed"
    assert status["counts"] == {"queued": 0, "running": 0, "succeeded": len(VALID_LINES), "failed": 0, "cancelled": 0}
    assert status["finished"] == len(VALID_LINES)
    assert status["progress"] == 1.0
    assert status["estimated_seconds_left"] == 0.0
    assert status["input_file_name"] == "夜間.jsonl"
    assert status["metadata"] == {"案件": "夜間バッチ"}
    assert status["finished_at"] is not None
    assert status["cancelled_at"] is None

    compliant = [item for item in results if item["format"]["ok"]]
    assert status["format"] == {
        "type": "regex",
        "checked": len(VALID_LINES),
        "compliant": len(compliant),
        "compliance_rate": round(len(compliant) / len(VALID_LINES), 6),
        "unchecked_succeeded": 0,
    }
    assert 0 < len(compliant) < len(VALID_LINES), [item["output"] for item in results]

    assert download.headers["X-Slotq-Results-Complete"] == "true"
    assert download.headers["X-Slotq-Line-Count"] == str(len(VALID_LINES))
    assert download.headers["X-Slotq-Last-Line"] == str(max(VALID_LINES))
    assert [(item["line"], item["custom_id"]) for item in results] == list(VALID_LINES.items())
    for item in results:
        row = next(row for row in rows if row["line_number"] == item["line"])
        assert item["status"] == "succeeded", item
        assert item["error"] is None
        assert isinstance(item["output"], str)
        assert item["output"] == row["output_text"]
        assert item["format"]["source"] is None
        matches = re.fullmatch(NO_WHITESPACE, item["output"].strip()) is not None
        assert item["format"]["ok"] == matches, item
        if matches:
            assert (item["parsed_output"], item["format"]["error"]) == ({}, None)
        else:
            assert (item["parsed_output"], item["format"]["error"]) == (None, REGEX_MISMATCH)
    for line in ONE_TOKEN_LINES:
        one_token = next(item for item in results if item["line"] == line)
        assert one_token["output_tokens"] == 1
        assert one_token["format"]["ok"] is True, one_token


def test_resumed_downloads_join_byte_identical(stack: tuple[str, list[Started]], api_key: str,
                                               mixed_batch: dict[str, Any], cli_env: dict[str, str], tmp_path: Path) -> None:
    base_url, _ = stack
    batch_id = mixed_batch["accepted"]["id"]
    one_shot = get_results(base_url, batch_id, api_key).content
    one_shot_lines = one_shot.splitlines(keepends=True)
    kept = 2
    resume_after = json.loads(one_shot_lines[kept - 1])["line"]

    resumed = get_results(base_url, batch_id, api_key, after_line=resume_after)
    past_end = get_results(base_url, batch_id, api_key, after_line=max(VALID_LINES))
    partial_file = tmp_path / "結果.jsonl"
    # An interrupted download: two complete lines and half of the third.
    partial_file.write_bytes(b"".join(one_shot_lines[:kept]) + one_shot_lines[kept][: len(one_shot_lines[kept]) // 2])
    first_run = run_slotq(["batch", "results", batch_id, "-o", str(partial_file), "--url", base_url, "--no-progress"], cli_env)
    after_first_run = partial_file.read_bytes()
    second_run = run_slotq(["batch", "results", batch_id, "-o", str(partial_file), "--url", base_url, "--no-progress"], cli_env)

    assert len(one_shot_lines) == len(VALID_LINES)
    assert "単語-東京".encode() in one_shot
    assert "文-富士山".encode() in one_shot
    assert json.dumps("単語-東京").encode() not in one_shot
    assert mixed_batch["incremental"] == one_shot

    assert b"".join(one_shot_lines[:kept]) + resumed.content == one_shot
    assert resumed.headers["X-Slotq-Line-Count"] == str(len(VALID_LINES) - kept)
    assert resumed.headers["X-Slotq-Last-Line"] == str(max(VALID_LINES))
    assert past_end.content == b""
    assert past_end.headers["X-Slotq-Line-Count"] == "0"
    assert past_end.headers["X-Slotq-Results-Complete"] == "true"

    assert first_run.returncode == 0, first_run.stderr
    assert after_first_run == one_shot
    assert f"{len(VALID_LINES)} lines ({len(VALID_LINES) - kept} new" in first_run.stderr
    assert second_run.returncode == 0, second_run.stderr
    assert partial_file.read_bytes() == one_shot
    assert f"{len(VALID_LINES)} lines (0 new" in second_run.stderr


def test_cancel_midway_keeps_finished_results(stack: tuple[str, list[Started]], api_key: str, cli_env: dict[str, str],
                                              integration_database_url: str, tokenizer_facts: None) -> None:
    base_url, started = stack
    response = post_batch(base_url, cancel_upload(), api_key)
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while batch_status(base_url, batch_id, api_key)["finished"] == 0:
        assert time.monotonic() < deadline, f"no job of batch {batch_id} finished\n{logs(started)}"
        time.sleep(POLL_INTERVAL_S)
    before_cancel = {row["line_number"]: row for row in batch_jobs(integration_database_url, batch_id)}
    cancel = requests.post(f"{base_url}/v1/batches/{batch_id}/cancel", headers=auth(api_key), timeout=30)
    cancel_answered_at = datetime.now(timezone.utc)
    final = wait_batch_done(base_url, batch_id, api_key, started)
    again = requests.post(f"{base_url}/v1/batches/{batch_id}/cancel", headers=auth(api_key), timeout=30)
    results = parse_lines(get_results(base_url, batch_id, api_key).content)
    cli_status = run_slotq(["batch", "status", batch_id, "--url", base_url], cli_env)

    assert cancel.status_code == 200, cancel.text
    at_cancel = cancel.json()
    ran_before_cancel = at_cancel["counts"]["succeeded"] + at_cancel["counts"]["failed"] + at_cancel["counts"]["running"]
    assert at_cancel["status"] in ("cancelling", "cancelled")
    assert at_cancel["cancelled_jobs"] >= 1, at_cancel
    assert at_cancel["counts"]["queued"] == 0
    assert at_cancel["counts"]["cancelled"] == at_cancel["cancelled_jobs"]
    assert ran_before_cancel + at_cancel["cancelled_jobs"] == CANCEL_LINE_COUNT

    assert final["status"] == "cancelled"
    assert final["cancelled_at"] == at_cancel["cancelled_at"]
    assert final["counts"]["queued"] == final["counts"]["running"] == 0
    assert final["counts"]["cancelled"] == at_cancel["cancelled_jobs"]
    assert final["counts"]["succeeded"] + final["counts"]["failed"] == ran_before_cancel
    assert sum(final["counts"].values()) == final["line_count"] == CANCEL_LINE_COUNT
    assert final["format"]["checked"] == final["counts"]["succeeded"]
    assert final["format"]["compliant"] == 0
    assert final["format"]["compliance_rate"] == 0.0
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "batch_finished"
    assert cli_status.returncode == 0, cli_status.stderr
    assert json.loads(cli_status.stdout)["counts"] == final["counts"]

    assert [item["line"] for item in results] == list(range(2, CANCEL_LINE_COUNT + 2))
    assert [item["custom_id"] for item in results] == [f"取消-{index:02d}" for index in range(1, CANCEL_LINE_COUNT + 1)]
    for item in results:
        if item["status"] == "cancelled":
            assert before_cancel[item["line"]]["status"] in ("queued", "cancelled"), item
            assert (item["started_at"], item["output"], item["format"]) == (None, None, None)
            continue
        assert item["status"] == "succeeded", item
        assert parse_time(item["started_at"]) <= cancel_answered_at, item
        assert item["format"]["ok"] is False, item
        assert item["format"]["error"], item
        assert 1 <= item["output_tokens"] <= 4
        if before_cancel[item["line"]]["status"] == "succeeded":
            assert item["output"] == before_cancel[item["line"]]["output_text"]
