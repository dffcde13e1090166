"""Worker metrics: recorded by the real task on the bundled model, summed over processes, served
by the worker's main process.

The metrics of this test process live for the whole session, so tests compare values before
and after their own jobs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from slotq.metrics import prepare_multiprocess_dir
from slotq.requests import parse_job_request
from slotq.settings import Settings, SettingsError, load_settings
from slotq.store import Job, JobRepository
from worker import metrics
from worker.main import _serve_metrics
from worker.tasks import run_job

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STAGES = ("prefill", "optimize", "decode", "total")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    """Return the values that the tests below compare, keyed by a readable name."""
    values = {
        "succeeded": sample("slotq_jobs_finished_total", status="succeeded"),
        "failed": sample("slotq_jobs_finished_total", status="failed"),
        "overfit_true": sample("slotq_job_overfit_total", overfit="true"),
        "overfit_false": sample("slotq_job_overfit_total", overfit="false"),
        "retries": sample("slotq_job_retries_total"),
        "batches": sample("slotq_worker_batch_jobs_count"),
        "batch_jobs": sample("slotq_worker_batch_jobs_sum"),
        "queue_wait_count": sample("slotq_job_queue_wait_seconds_count"),
        "queue_wait_sum": sample("slotq_job_queue_wait_seconds_sum"),
        "delta_norm_count": sample("slotq_job_delta_norm_count"),
        "delta_norm_sum": sample("slotq_job_delta_norm_sum"),
        "tokens_per_second_count": sample("slotq_job_tokens_per_second_count"),
        "tokens_per_second_sum": sample("slotq_job_tokens_per_second_sum"),
    }
    for stage in STAGES:
        values[f"{stage}_count"] = sample("slotq_job_stage_seconds_count", stage=stage)
        values[f"{stage}_sum"] = sample("slotq_job_stage_seconds_sum", stage=stage)
    return values


def change(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def submit(store: JobRepository, tmp_path: Path, body: dict) -> str:
    request = parse_job_request(body, Settings(data_dir=tmp_path))
    return store.create_job(request, "api-model").id


def test_batch_records_stored_outcomes(store, worker_model, tmp_path) -> None:
    fitted_id = submit(store, tmp_path, {"prompt": "The capital of France is", "slot": {"steps": 2, "lr": 0.01},
                                         "generation": {"max_new_tokens": 4}})
    plain_id = submit(store, tmp_path, {"prompt": "富士山は", "slot": {"steps": 0},
                                        "generation": {"max_new_tokens": 3}})
    before = snapshot()

    run_job(fitted_id)

    delta = change(before, snapshot())
    fitted, plain = store.get_job(fitted_id), store.get_job(plain_id)
    jobs = [fitted, plain]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"], [job.error for job in jobs]
    assert delta["succeeded"] == 2
    assert delta["failed"] == 0
    assert delta["batches"] == 1
    assert delta["batch_jobs"] == 2
    assert delta["queue_wait_count"] == 2
    assert delta["queue_wait_sum"] == pytest.approx(sum(job.timings_ms["queue_wait"] for job in jobs) / 1000)
    for stage in STAGES:
        assert delta[f"{stage}_count"] == 2, stage
        assert delta[f"{stage}_sum"] == pytest.approx(sum(job.timings_ms[stage] for job in jobs) / 1000), stage
    assert delta["tokens_per_second_count"] == 2
    assert delta["tokens_per_second_sum"] == pytest.approx(
        sum(job.output_tokens / (job.timings_ms["decode"] / 1000) for job in jobs)
    )
    # Only the job with steps > 0 has a delta and an over-fitting check.
    assert delta["delta_norm_count"] == 1
    assert delta["delta_norm_sum"] == pytest.approx(fitted.delta_norm)
    assert delta[f"overfit_{str(fitted.overfit).lower()}"] == 1
    assert delta["overfit_true"] + delta["overfit_false"] == 1
    assert delta["retries"] == 0


def test_failed_job_counted(store, worker_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLOTQ_MAX_PROMPT_TOKENS", "2")
    job_id = submit(store, tmp_path, {"prompt": "a prompt longer than two tokens", "slot": {"steps": 1}})
    before = snapshot()

    run_job(job_id)

    delta = change(before, snapshot())
    assert store.get_job(job_id).status == "failed"
    assert delta["failed"] == 1
    assert delta["succeeded"] == 0
    assert delta["total_count"] == 0
    assert delta["queue_wait_count"] == 1


def test_invalid_stored_request_counted(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello"})
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(request={"prompt": "Hello", "slot": {"steps": -1}}))
    before = snapshot()

    run_job(job_id)

    delta = change(before, snapshot())
    assert store.get_job(job_id).status == "failed"
    assert delta["failed"] == 1
    assert delta["batches"] == 0


def test_second_attempt_counted_as_retry(store, worker_model, tmp_path) -> None:
    job_id = submit(store, tmp_path, {"prompt": "Hello", "slot": {"steps": 0}, "generation": {"max_new_tokens": 1}})
    assert store.claim_job(job_id, "lost-worker") is not None
    # What the sweeper does when the first worker is lost: the job is queued again.
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id).values(status="queued"))
    before = snapshot()

    run_job(job_id)

    delta = change(before, snapshot())
    job = store.get_job(job_id)
    assert job.attempts == 2
    assert job.status == "succeeded", job.error
    assert delta["retries"] == 1


def test_no_gpu_metrics_without_cuda(store, worker_model, tmp_path) -> None:
    import torch

    job_id = submit(store, tmp_path, {"prompt": "Hello", "slot": {"steps": 0}, "generation": {"max_new_tokens": 1}})

    run_job(job_id)

    names = {family.name for family in metrics.REGISTRY.collect()}
    assert not torch.cuda.is_initialized()
    assert "slotq_gpu_memory_allocated_bytes" not in names
    assert "slotq_gpu_memory_max_allocated_bytes" not in names
    assert "slotq_worker_batch_jobs" in names


# Run in a fresh interpreter: it sets up multiprocess mode as ``slotq worker`` does, serves the
# metrics from the main process and forks two children that record the given outcomes, like
# two prefork pool processes. One child also sets a live gauge before it exits.
AGGREGATION_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, sys
    from slotq.metrics import prepare_multiprocess_dir
    metrics_dir = prepare_multiprocess_dir("worker")
    from prometheus_client import Gauge
    from worker import metrics
    from worker.execution import JobOutcome
    from types import SimpleNamespace

    port, jobs = int(sys.argv[1]), json.loads(sys.argv[2])

    def pool_process(job):
        metrics.record_claim(SimpleNamespace(timings_ms={"queue_wait": job["queue_wait"]}, attempts=job["attempts"]))
        metrics.record_outcome(JobOutcome(fields=job["fields"], error=None, guard=job["guard"]))
        metrics.record_batch(1)
        Gauge("slotq_test_live", "live gauge of a pool process", multiprocess_mode="livesum").set(5)

    server = metrics.start_metrics_server(port, metrics_dir.path)
    context = multiprocessing.get_context("fork")
    for job in jobs:
        child = context.Process(target=pool_process, args=(job,))
        child.start()
        child.join()
        assert child.exitcode == 0, child.exitcode
    print("ready", metrics_dir.path, flush=True)
    sys.stdin.read()
    server.shutdown()
    metrics_dir.remove()
    """
)


def test_pool_processes_summed_by_server(store, worker_model, tmp_path, closed_port) -> None:
    fitted_id = submit(store, tmp_path, {"prompt": "Name a color.", "slot": {"steps": 1, "lr": 0.01},
                                         "generation": {"max_new_tokens": 2}})
    plain_id = submit(store, tmp_path, {"prompt": "Count to three.", "slot": {"steps": 0},
                                        "generation": {"max_new_tokens": 2}})
    run_job(fitted_id)
    stored = [store.get_job(fitted_id), store.get_job(plain_id)]
    jobs = [
        {
            "queue_wait": job.timings_ms["queue_wait"],
            "attempts": attempts,
            "fields": {"timings_ms": {key: job.timings_ms[key] for key in STAGES}, "output_tokens": job.output_tokens,
                       "delta_norm": job.delta_norm, "steps_run": job.steps_run},
            "guard": {"overfit": job.overfit} if job.overfit is not None else None,
        }
        for job, attempts in zip(stored, (1, 2))
    ]

    process = subprocess.Popen(
        [sys.executable, "-c", AGGREGATION_SCRIPT, str(closed_port), json.dumps(jobs)],
        cwd=PROJECT_ROOT, env={name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = process.stdout.readline()
        assert ready.startswith("ready"), process.stderr.read()
        metrics_dir = Path(ready.split()[1])
        body = requests.get(f"http://127.0.0.1:{closed_port}/metrics", timeout=10).text
    finally:
        process.stdin.close()
        process.wait(timeout=30)

    samples = {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in text_string_to_metric_families(body)
        for item in family.samples
    }
    assert process.returncode == 0, process.stderr.read()
    assert samples[("slotq_jobs_finished_total", (("status", "succeeded"),))] == 2
    assert samples[("slotq_worker_batch_jobs_count", ())] == 2
    assert samples[("slotq_job_retries_total", ())] == 1
    assert samples[("slotq_job_queue_wait_seconds_sum", ())] == pytest.approx(
        sum(job.timings_ms["queue_wait"] for job in stored) / 1000
    )
    assert samples[("slotq_job_stage_seconds_sum", (("stage", "total"),))] == pytest.approx(
        sum(job.timings_ms["total"] for job in stored) / 1000
    )
    assert samples[("slotq_job_delta_norm_count", ())] == 1
    # Both children have exited, so their live gauge is gone from the sum.
    assert not any(name == "slotq_test_live" for name, _ in samples)
    assert not metrics_dir.exists()


def test_busy_port_logged_not_fatal(tmp_path, caplog) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]

        server = metrics.start_metrics_server(port, tmp_path)

    assert server is None
    assert f"cannot bind 0.0.0.0:{port}" in caplog.text
    assert "SLOTQ_WORKER_METRICS_PORT" in caplog.text


def test_metrics_port_setting_bounds() -> None:
    assert load_settings({}).worker_metrics_port == 9808
    assert load_settings({"SLOTQ_WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    assert load_settings({"SLOTQ_WORKER_METRICS_PORT": "65535"}).worker_metrics_port == 65535
    with pytest.raises(SettingsError, match="SLOTQ_WORKER_METRICS_PORT=65536 is invalid"):
        load_settings({"SLOTQ_WORKER_METRICS_PORT": "65536"})
    with pytest.raises(SettingsError, match="SLOTQ_WORKER_METRICS_PORT=-1 is invalid"):
        load_settings({"SLOTQ_WORKER_METRICS_PORT": "-1"})


def test_port_zero_serves_nothing(monkeypatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    stop_metrics = _serve_metrics(0)
    stop_metrics()

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_abandoned_metrics_dirs_removed(tmp_path, monkeypatch) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    abandoned = tmp_path / f"slotq-test-metrics-{exited.pid}-abc123"
    live = tmp_path / f"slotq-test-metrics-{os.getpid()}-def456"
    other_role = tmp_path / f"slotq-api-metrics-{exited.pid}-ghi789"
    for folder in (abandoned, live, other_role):
        folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")

    created = prepare_multiprocess_dir("test")

    assert not abandoned.exists()
    assert live.exists()
    assert other_role.exists()
    assert created.path.parent == tmp_path
    assert created.path.name.startswith(f"slotq-test-metrics-{os.getpid()}-")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(created.path)
    created.remove()
    assert not created.path.exists()


def test_forked_child_keeps_metrics_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    created = prepare_multiprocess_dir("test")

    child = os.fork()
    if child == 0:
        # What a gunicorn worker does when it leaves with SystemExit through the caller's finally.
        created.remove()
        os._exit(0)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert created.path.exists()
    created.remove()
    assert not created.path.exists()


def test_operator_dir_emptied_and_kept(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "operator" / "metrics"
    folder.mkdir(parents=True)
    (folder / "counter_12345.db").write_bytes(b"stale")
    (folder / "README").write_text("kept", encoding="utf-8")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))

    prepared = prepare_multiprocess_dir("test")
    prepared.remove()

    assert prepared.created is False
    assert prepared.path == folder
    assert not (folder / "counter_12345.db").exists()
    assert (folder / "README").read_text(encoding="utf-8") == "kept"
