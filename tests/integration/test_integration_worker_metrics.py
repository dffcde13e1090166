"""A real ``slotq worker`` serves the metrics of its prefork pool process from its main process."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api.enqueue import make_celery_enqueue
from integration_support import child_environment, free_port, start_slotq, stop
from slotq.requests import parse_job_request
from slotq.settings import load_settings
from slotq.store import JobRepository, make_engine
from slotq.store.migrate import upgrade

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 300.0


def scrape(port: int) -> dict:
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (item.name, tuple(sorted(item.labels.items()))): item.value
        for family in text_string_to_metric_families(body)
        for item in family.samples
    }


def test_worker_serves_pool_metrics(tmp_path: Path, model_cache_dir: Path) -> None:
    metrics_port = free_port()
    # One validation prompt keeps the worker's start short; the guardrail tests cover the shipped set.
    validation = tmp_path / "validation.jsonl"
    validation.write_text(json.dumps({"messages": [{"role": "user", "content": "こんにちは"}]}, ensure_ascii=False) + "\n",
                          encoding="utf-8")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = child_environment({
        "TMPDIR": str(temporary),
        "SLOTQ_VALIDATION_PROMPTS": str(validation),
        "SLOTQ_DATA_DIR": str(tmp_path / "data"),
        "SLOTQ_CACHE_DIR": str(model_cache_dir),
        "SLOTQ_QUEUE": f"metrics-{uuid.uuid4().hex[:8]}",
        "SLOTQ_WORKER_METRICS_PORT": str(metrics_port),
        "SLOTQ_WORKER_BATCH_WAIT_MS": "0",
    })
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = load_settings(env)
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    store = JobRepository(engine)
    worker = start_slotq("worker", ["worker", "--concurrency", "1", "--pool", "prefork"], env, tmp_path)

    try:
        request = parse_job_request({"prompt": "Hello", "slot": {"steps": 1, "lr": 0.01},
                                     "generation": {"max_new_tokens": 2}}, settings)
        job_id = store.create_job(request, settings.model_name).id
        enqueue = make_celery_enqueue(settings)
        enqueue(job_id)
        enqueue.producer_app.close()

        deadline = time.monotonic() + JOB_TIMEOUT_S
        while store.get_job(job_id).status in ("queued", "running") and time.monotonic() < deadline:
            assert worker.process.poll() is None, worker.log_tail()
            time.sleep(0.5)
        job = store.get_job(job_id)
        samples = scrape(metrics_port)
        folders_while_running = list(temporary.glob("slotq-worker-metrics-*"))
    finally:
        status = stop(worker)
        engine.dispose()

    assert job.status == "succeeded", (job.error, worker.log_tail())
    assert samples[("slotq_jobs_finished_total", (("status", "succeeded"),))] == 1
    assert samples[("slotq_worker_batch_jobs_count", ())] == 1
    assert samples[("slotq_job_queue_wait_seconds_count", ())] == 1
    assert samples[("slotq_job_stage_seconds_sum", (("stage", "total"),))] == pytest.approx(
        job.timings_ms["total"] / 1000
    )
    assert samples[("slotq_job_delta_norm_sum", ())] == pytest.approx(job.delta_norm)
    assert not any(name.startswith("slotq_gpu_") for name, _ in samples)
    assert status == 0, worker.log_tail()
    assert f"serving worker metrics on http://0.0.0.0:{metrics_port}/metrics" in worker.log_path.read_text(encoding="utf-8")
    assert len(folders_while_running) == 1
    assert not folders_while_running[0].exists()
