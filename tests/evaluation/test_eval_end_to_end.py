"""End to end: ``slotq eval`` on a tiny random model, on the bundled model, and through a real API."""

from __future__ import annotations

import argparse
import json
import queue
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from api.app import create_app
from slot_core import SlotConfig, generate
from slotq.evaluation import EvaluationError, add_eval_command, load_dataset, parse_arms, run_evaluation
from slotq.evaluation.evaluate import EvalOptions
from slotq.evaluation.service_runner import ServiceRunner
from slotq.keys import create_key
from slotq.requests import parse_job_request
from slotq.settings import Settings
from slotq.store import JobRepository, make_engine
from worker.tasks import result_fields

OUTPUT_FILES = ("results.jsonl", "summary.json", "report.md", "run.json",
                "metrics.png", "latency.png", "delta_norms.png", "loss_traces.png")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slotq")
    add_eval_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def check_outputs(out: Path, prompts: int, arms: int) -> dict:
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == prompts * arms
    assert all(row["text"] is not None for row in rows)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["arms"]) == arms
    assert "worker time per 1,000 jobs" in (out / "report.md").read_text(encoding="utf-8")
    return summary


@pytest.mark.parametrize("data_fixture, learning_rates, task_metric", [
    ("gsm8k_file", "0.01,0.1", "exact_match"),
    ("ifeval_file", "0.1", "prompt_strict"),
])
def test_cli_tiny_model_writes_outputs(request, tmp_path, tiny_model_folder, small_validation_file, data_fixture,
                                       learning_rates, task_metric):
    data = request.getfixturevalue(data_fixture)
    out = tmp_path / "out"
    status = run_cli(["eval", "--data", str(data), "--steps", "0,2", "--lr", learning_rates, "--max-new-tokens", "6",
                      "--batch-size", "2", "--model", str(tiny_model_folder), "--device", "cpu", "--out", str(out),
                      "--no-progress"])
    assert status == 0

    summary = check_outputs(out, prompts=3, arms=1 + len(learning_rates.split(",")))
    assert summary["task_metric"] == task_metric
    baseline, slot_arm = summary["arms"][0], summary["arms"][1]
    assert baseline["delta_norm"]["median"] == 0
    assert slot_arm["delta_norm"]["median"] > 0
    assert slot_arm["overfit"]["total"] == 3
    assert slot_arm["vs_baseline"][task_metric]["pairs"] == 3
    assert slot_arm["overhead"]["extra_compute_s_per_1000_jobs"] is not None


def test_cli_missing_data_names_file(tmp_path):
    from slotq.cli import CliError

    missing = tmp_path / "absent.jsonl"
    with pytest.raises(CliError, match=f"data file not found: {missing}"):
        run_cli(["eval", "--data", str(missing), "--out", str(tmp_path / "out")])


def test_bundled_model_two_prompts(tmp_path, ifeval_file, small_validation_file):
    out = tmp_path / "out"
    status = run_cli(["eval", "--data", str(ifeval_file), "--limit", "2", "--steps", "0,2", "--lr", "0.01",
                      "--max-new-tokens", "8", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert status == 0
    summary = check_outputs(out, prompts=2, arms=2)
    assert summary["run"]["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert summary["arms"][1]["overfit"]["total"] == 2
    assert all(len(row["loss_trace"]) == 3 for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())
               if row["arm"] != "steps=0")


class FakeWorker:
    """Completes queued jobs through the job store, running the real engine on the tiny model."""

    def __init__(self, repository: JobRepository, settings: Settings, model, tokenizer):
        self.repository = repository
        self.settings = settings
        self.model = model
        self.tokenizer = tokenizer
        self.job_ids: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def enqueue(self, job_id: str) -> None:
        self.job_ids.put(job_id)

    def _loop(self) -> None:
        while (job_id := self.job_ids.get()) is not None:
            record = self.repository.claim_job(job_id, "fake-worker")
            request = parse_job_request(record.request, self.settings)
            result = generate(self.model, self.tokenizer, [request.engine_prompt],
                              SlotConfig(steps=request.slot.steps, lr=request.slot.lr),
                              max_new_tokens=request.generation.max_new_tokens, seed=request.generation.seed)[0]
            self.repository.complete_job(job_id, result_fields(result, "tiny"))


@pytest.fixture
def service(sqlite_url, tmp_path, tiny_model, tokenizer):
    """A real API app on SQLite, served on a free local port, with a fake in-process worker."""
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    engine = make_engine(sqlite_url)
    worker = FakeWorker(JobRepository(engine), settings, tiny_model, tokenizer)
    app = create_app(settings, enqueue=worker.enqueue, repository=JobRepository(engine))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server_thread = threading.Thread(target=server.serve_forever, daemon=True)
    worker.thread.start()
    server_thread.start()
    api_key = create_key("eval-tests", repository=JobRepository(engine)).key
    yield f"http://127.0.0.1:{server.server_port}", api_key

    server.shutdown()
    worker.job_ids.put(None)
    worker.thread.join(timeout=30)
    server_thread.join(timeout=30)
    engine.dispose()


def test_through_service(tmp_path, service, gsm8k_file):
    dataset = load_dataset(gsm8k_file, limit=2)
    url, api_key = service
    runner = ServiceRunner(url, max_new_tokens=4, poll_interval_s=0.05, job_timeout_s=60, api_key=api_key)
    options = EvalOptions(out=tmp_path / "out", arms=parse_arms("0,2", "0.1"), max_new_tokens=4, batch_size=2,
                          model="tiny", progress=False)
    summary = run_evaluation(dataset, runner, options)

    check_outputs(tmp_path / "out", prompts=2, arms=2)
    slot_arm = summary["arms"][1]
    assert summary["run"]["mode"] == "service"
    assert slot_arm["errors"] == 0
    assert slot_arm["delta_norm"]["median"] > 0
    assert slot_arm["wall_ms"]["count"] == 2
    assert slot_arm["overfit"] is None


def test_service_rejection_stops_run(tmp_path, service, gsm8k_file):
    dataset = load_dataset(gsm8k_file, limit=1)
    url, api_key = service
    runner = ServiceRunner(url, max_new_tokens=4, poll_interval_s=0.05, job_timeout_s=60, api_key=api_key)
    options = EvalOptions(out=tmp_path / "out", arms=parse_arms("0,500", "0.1"), max_new_tokens=4, progress=False)
    with pytest.raises(EvaluationError, match="rejected a job of arm steps=500,lr=0.1 with HTTP 422.*slot.steps"):
        run_evaluation(dataset, runner, options)


def test_service_unreachable(tmp_path, closed_port, gsm8k_file):
    dataset = load_dataset(gsm8k_file, limit=1)
    runner = ServiceRunner(f"http://127.0.0.1:{closed_port}", max_new_tokens=4)
    options = EvalOptions(out=tmp_path / "out", arms=parse_arms("0", "0.1"), max_new_tokens=4, progress=False)
    with pytest.raises(EvaluationError, match="is unreachable"):
        run_evaluation(dataset, runner, options)
