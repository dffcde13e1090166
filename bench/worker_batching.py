"""Benchmark: jobs per minute through the worker task with batching on and off.

Submits 32 jobs (Japanese order e-mails from examples/forms_ja, greedy, steps 5, lr 0.01, and 96 new
tokens as that example's batch defaults ask) to a fresh SQLite job store, then runs the Celery task `slotq.run_job` in this process for
each job id in submission order, as a worker with concurrency 1 would. With batching on, the first
task claims up to SLOTQ_WORKER_BATCH_SIZE queued jobs and runs them as one SLOT batch; the
companions' own tasks then find nothing to claim. Arms alternate over the rounds so machine noise
hits both alike. The Celery broker is not involved: it adds the same per-message cost to both arms.

Usage: python bench/worker_batching.py [--jobs 32] [--batch-size 8] [--max-new-tokens 96] [--rounds 2]
       [--json OUT]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "forms_ja" / "orders.jsonl"


def load_prompts(count: int) -> list[list[dict]]:
    lines = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    requests = [line["request"] for line in lines if "request" in line]
    return [requests[index % len(requests)]["messages"] for index in range(count)]


def run_arm(batch_size: int, prompts, data_dir: Path, max_new_tokens: int) -> float:
    """Return the seconds to run every job of one arm."""
    os.environ["SLOTQ_WORKER_BATCH_SIZE"] = str(batch_size)
    os.environ["SLOTQ_WORKER_BATCH_WAIT_MS"] = "0"

    from slotq.requests import parse_job_request
    from slotq.settings import Settings
    from slotq.store import JobRepository, make_engine, repository
    from slotq.store.migrate import upgrade
    from worker.tasks import run_job

    url = f"sqlite:///{data_dir / f'bench-{batch_size}-{time.monotonic_ns()}.db'}"
    upgrade(url)
    store = JobRepository(make_engine(url))
    repository.configure(store)
    settings = Settings(data_dir=data_dir)
    body = {"slot": {"steps": 5, "lr": 0.01}, "generation": {"max_new_tokens": max_new_tokens}}
    ids = [store.create_job(parse_job_request({"messages": p, **body}, settings), "bench").id for p in prompts]

    started = time.perf_counter()
    for job_id in ids:
        run_job(job_id)
    elapsed = time.perf_counter() - started

    statuses = {store.get_job(job_id).status for job_id in ids}
    if statuses != {"succeeded"}:
        raise SystemExit(f"batch size {batch_size}: jobs ended as {statuses}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32, help="jobs per arm")
    parser.add_argument("--batch-size", type=int, default=8, help="SLOTQ_WORKER_BATCH_SIZE of the batching arm")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="generation.max_new_tokens of every job")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()

    from worker import runtime
    from slotq.settings import load_settings

    runtime.get_model(load_settings())  # load once, outside the timings
    prompts = load_prompts(args.jobs)
    arms = {"batching off (size 1)": 1, f"batching on (size {args.batch_size})": args.batch_size}
    seconds = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as folder:
        run_arm(args.batch_size, prompts[:2], Path(folder), args.max_new_tokens)  # warm-up: validation set, lazy init
        for round_index in range(args.rounds):
            for name, size in arms.items():
                seconds[name].append(run_arm(size, prompts, Path(folder), args.max_new_tokens))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    report = {"jobs": args.jobs, "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "arms": {}}
    for name, values in seconds.items():
        median = statistics.median(values)
        report["arms"][name] = {"median_s": round(median, 2), "jobs_per_minute": round(60 * args.jobs / median, 1)}
    names = list(arms)
    report["speedup"] = round(report["arms"][names[1]]["jobs_per_minute"] / report["arms"][names[0]]["jobs_per_minute"], 2)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
