"""`slotq serve` with no configuration: SQLite job store, kombu SQLAlchemy broker on SQLite, the
API under gunicorn and one worker, all stopped cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

from integration_support import (
    Started,
    assert_succeeded_job,
    child_environment,
    create_api_key,
    descendants,
    free_port,
    job_row,
    kill_leftovers,
    run_slotq,
    start_slotq,
    stop,
    submit,
    wait_final,
    wait_ready,
)

STEPS = 2
LR = 0.01
MAX_NEW_TOKENS = 5


def embedded_env(tmp_path: Path, model_cache_dir: Path) -> dict[str, str]:
    """Environment with only a data folder, a port and the model cache configured."""
    return child_environment({
        "SLOTQ_DATA_DIR": str(tmp_path / "data"),
        "SLOTQ_CACHE_DIR": str(model_cache_dir),
        "SLOTQ_API_PORT": str(free_port()),
        "SLOTQ_API_WORKERS": "1",
    })


def start_serve(tmp_path: Path, env: dict[str, str]) -> tuple[Started, str]:
    """Start `slotq serve` and return it with its base URL."""
    return start_slotq("serve", ["serve"], env, tmp_path), f"http://127.0.0.1:{env['SLOTQ_API_PORT']}"


def wait_for_descendants(started: Started, count: int, timeout_s: float = 30.0) -> list[psutil.Process]:
    """Wait until the process has at least ``count`` descendants (API and worker processes)."""
    deadline = time.monotonic() + timeout_s
    found = descendants(started)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        found = descendants(started)
    return found


def test_serve_runs_jobs_then_stops_on_sigterm(tmp_path: Path, model_cache_dir: Path) -> None:
    env = embedded_env(tmp_path, model_cache_dir)
    upgrade = run_slotq(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    api_key = create_api_key(env, "laptop")
    serve, base_url = start_serve(tmp_path, env)
    children: list[psutil.Process] = []
    try:
        wait_ready(base_url, [serve])
        # gunicorn master and its worker, Celery's main process and its pool process.
        children = wait_for_descendants(serve, 4)
        english_id = submit(base_url, {"prompt": "Name a fruit.", "slot": {"steps": STEPS, "lr": LR},
                                       "generation": {"max_new_tokens": MAX_NEW_TOKENS}}, api_key)
        japanese_id = submit(base_url, {"messages": [{"role": "user", "content": "好きな季節を一つ教えてください。"}],
                                        "slot": {"steps": STEPS, "lr": LR},
                                        "generation": {"max_new_tokens": MAX_NEW_TOKENS}}, api_key)
        english = wait_final(base_url, english_id, api_key, [serve])
        japanese = wait_final(base_url, japanese_id, api_key, [serve])
        status = stop(serve, signal.SIGTERM)
    finally:
        stop(serve)
        leftovers = kill_leftovers(children)

    database_url = f"sqlite:///{tmp_path / 'data' / 'slotq.db'}"
    assert_succeeded_job(english, job_row(database_url, english_id), STEPS, MAX_NEW_TOKENS)
    japanese_row = job_row(database_url, japanese_id)
    assert_succeeded_job(japanese, japanese_row, STEPS, MAX_NEW_TOKENS)
    assert "好きな季節" in japanese_row["request_text"]
    assert (tmp_path / "data" / "broker.db").is_file()
    assert len(children) >= 4, serve.log_tail()
    assert status == 0, serve.log_tail()
    assert leftovers == [], serve.log_tail()


def test_serve_stops_everything_on_sigint(tmp_path: Path, model_cache_dir: Path) -> None:
    serve, base_url = start_serve(tmp_path, embedded_env(tmp_path, model_cache_dir))
    children: list[psutil.Process] = []
    try:
        wait_ready(base_url, [serve])
        children = wait_for_descendants(serve, 4)
        status = stop(serve, signal.SIGINT)
    finally:
        stop(serve)
        leftovers = kill_leftovers(children)

    log = serve.log_tail()
    assert len(children) >= 4, log
    assert status == 0, log
    assert leftovers == [], log
    # The whole log: the API, sweeper and worker write many lines while they stop.
    assert "received SIGINT, stopping" in serve.log_path.read_text(encoding="utf-8")


def test_serve_exits_when_worker_dies(tmp_path: Path, model_cache_dir: Path) -> None:
    serve, base_url = start_serve(tmp_path, embedded_env(tmp_path, model_cache_dir))
    children: list[psutil.Process] = []
    try:
        wait_ready(base_url, [serve])
        children = wait_for_descendants(serve, 4)
        worker_main = next(child for child in children if child.ppid() == serve.process.pid and "worker" in child.cmdline())
        worker_main.kill()
        status = serve.process.wait(timeout=60)
    finally:
        stop(serve)
        leftovers = kill_leftovers(children)

    log = serve.log_tail()
    assert status == 1, log
    assert "the worker process" in log
    assert "exited with status" in log
    assert leftovers == [], log
