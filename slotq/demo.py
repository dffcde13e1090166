"""``slotq demo``: submit a handful of real prompts to the service and print what came back.

Unless ``--url`` names a running API, the demo starts the embedded stack (SQLite store and
broker in a temporary folder) on a free port, creates an API key for the tenant ``demo`` and
stops the stack at the end. Against ``--url`` it sends ``SLOTQ_API_KEY`` when that is set. The
prompts are two English requests, one Japanese request and the first IFEval prompts of the
IFEval data set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from slotq.logging import configure_logging
from slotq.settings import load_settings

logger = logging.getLogger(__name__)

#: IFEval prompts relative to the project root (the folder that contains pyproject.toml).
IFEVAL_RELATIVE_PATH = Path("..") / "shared" / "data" / "ifeval" / "input_dev200.jsonl"

FIXED_PROMPTS = (
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about a queue of jobs waiting for a GPU.",
    "日本の首都はどこですか？一文で答えてください。",
)

#: Tenant of the API key that the demo creates on its embedded stack.
DEMO_TENANT = "demo"
#: Job states after which a job never changes again.
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
#: Seconds between two polls of the same job.
POLL_INTERVAL_S = 0.5
#: Seconds between progress lines when standard error is not a terminal.
PROGRESS_INTERVAL_S = 5.0


class DemoError(Exception):
    """The demo cannot run: a missing data file, an unreachable API or a job that timed out."""


@dataclass(frozen=True)
class ApiClient:
    """Base URL of the API and the key sent with every request (None sends no key)."""

    url: str
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class DemoJob:
    """One submitted prompt and the job as last polled."""

    prompt: str
    job_id: str
    job: dict[str, Any]

    @property
    def status(self) -> str:
        return self.job.get("status", "unknown")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    parser.add_argument("--url", help="base URL of a running API, e.g. http://127.0.0.1:8000, sent SLOTQ_API_KEY when set (default: start the embedded stack)")
    parser.add_argument("--steps", type=int, default=5, help="SLOT optimisation steps per job (default: 5)")
    parser.add_argument("--lr", type=float, default=0.01, help="SLOT learning rate (default: 0.01)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated at most per job (default: 64)")
    parser.add_argument("--ifeval", type=Path, help=f"IFEval JSONL file (default: {IFEVAL_RELATIVE_PATH} from the project root)")
    parser.add_argument("--ifeval-count", type=int, default=3, help="IFEval prompts to submit, from the start of the file (default: 3)")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded stack's SQLite files here (default: a temporary folder, removed afterwards)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all jobs (default: 900)")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; return 0 when every job succeeded, 1 otherwise."""
    configure_logging("WARNING")
    try:
        prompts = list(FIXED_PROMPTS) + load_ifeval_prompts(_ifeval_path(args.ifeval), args.ifeval_count)
        _raise_keyboard_interrupt_on_sigterm()
        if args.url:
            api_key = load_settings().api_key
            jobs = run_prompts(ApiClient(args.url.rstrip("/"), api_key), prompts, args)
        else:
            jobs = _run_on_embedded_stack(prompts, args)
    except DemoError as error:
        print(f"slotq demo: {error}", file=sys.stderr)
        return 1

    print(format_table(jobs))
    succeeded = sum(job.status == "succeeded" for job in jobs)
    print(f"{succeeded} of {len(jobs)} jobs succeeded (steps={args.steps}, lr={args.lr})")
    return 0 if succeeded == len(jobs) else 1


def load_ifeval_prompts(path: Path, count: int) -> list[str]:
    """Return the first ``count`` prompts of an IFEval JSONL file.

    Raises:
        DemoError: the file is missing or a line is not a JSON object with a ``prompt`` string.
    """
    if count <= 0:
        return []
    if not path.is_file():
        raise DemoError(f"IFEval prompts not found: {path} (pass --ifeval FILE or --ifeval-count 0)")

    prompts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if len(prompts) == count:
                break
            try:
                prompt = json.loads(line)["prompt"]
            except (ValueError, KeyError, TypeError) as error:
                raise DemoError(f"{path}:{number}: not a JSON object with a 'prompt' field ({error})") from error
            prompts.append(prompt)
    return prompts


def run_prompts(client: ApiClient, prompts: list[str], args: argparse.Namespace) -> list[DemoJob]:
    """Submit every prompt through ``client`` and poll until each job is final."""
    jobs = [_submit(client, prompt, args) for prompt in prompts]
    _poll_until_final(client, jobs, args.timeout)
    return jobs


def format_table(jobs: list[DemoJob]) -> str:
    """Return a plain-text table: prompt and output starts, delta norm, ms per stage, status."""
    header = ("#", "prompt", "output", "δ norm", "prefill ms", "optimize ms", "decode ms", "total ms", "status")
    rows = [header]
    for number, job in enumerate(jobs, start=1):
        result = job.job.get("result") or {}
        timings = job.job.get("timings_ms") or {}
        rows.append((
            str(number),
            _one_line(job.prompt),
            _one_line(result.get("output_text") or job.job.get("error") or ""),
            _number(result.get("delta_norm"), "{:.4f}"),
            _number(timings.get("prefill"), "{:.0f}"),
            _number(timings.get("optimize"), "{:.0f}"),
            _number(timings.get("decode"), "{:.0f}"),
            _number(timings.get("total"), "{:.0f}"),
            job.status,
        ))

    limits = (3, 30, 40, 8, 10, 11, 9, 8, 9)
    widths = [min(max(_width(row[column]) for row in rows), limits[column]) for column in range(len(header))]
    numeric = {0, 3, 4, 5, 6, 7}
    lines = []
    for index, row in enumerate(rows):
        cells = [_fit(cell, widths[column], right=column in numeric) for column, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _ifeval_path(override: Path | None) -> Path:
    if override is not None:
        return override
    project_root = Path(__file__).resolve().parents[1]
    return (project_root / IFEVAL_RELATIVE_PATH).resolve()


def _run_on_embedded_stack(prompts: list[str], args: argparse.Namespace) -> list[DemoJob]:
    from slotq.embedded import Stack, StackError, stack_environment
    from slotq.keys import create_key

    with tempfile.TemporaryDirectory(prefix="slotq-demo-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        env = stack_environment(_embedded_base_environment(), host="127.0.0.1", port=_free_port(), data_dir=data_dir)
        log_path = Path(scratch) / "stack.log"
        print(f"starting the embedded stack (SQLite in {data_dir}, logs in {log_path})", file=sys.stderr)

        with log_path.open("w", encoding="utf-8") as log_file, Stack(env, log_file=log_file) as stack:
            try:
                stack.migrate()
                api_key = create_key(DEMO_TENANT, database_url=stack.settings.database_url).key
                stack.start()
                stack.wait_ready()
            except StackError as error:
                raise DemoError(f"{error}; last log lines:\n{_tail(log_path)}") from error
            print(f"API ready at {stack.url}; submitting {len(prompts)} jobs", file=sys.stderr)
            try:
                return run_prompts(ApiClient(stack.url, api_key), prompts, args)
            finally:
                print("stopping the embedded stack", file=sys.stderr)


def _embedded_base_environment() -> dict[str, str]:
    # The demo's own stack always runs embedded, even in a shell configured for Postgres and Redis.
    env = dict(os.environ)
    for variable in ("SLOTQ_DATABASE_URL", "SLOTQ_BROKER_URL"):
        env.pop(variable, None)
    env.setdefault("SLOTQ_API_WORKERS", "1")
    return env


def _submit(client: ApiClient, prompt: str, args: argparse.Namespace) -> DemoJob:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "slot": {"steps": args.steps, "lr": args.lr},
        "generation": {"max_new_tokens": args.max_new_tokens},
        "metadata": {"source": "slotq demo"},
    }
    url = f"{client.url}/v1/jobs"
    try:
        response = requests.post(url, json=body, headers=client.headers, timeout=30)
    except requests.RequestException as error:
        raise DemoError(f"cannot submit a job to {client.url}: {error}") from error
    if response.status_code != 202:
        raise DemoError(f"POST {url} returned status {response.status_code}: {response.text[:500]}")

    job = response.json()
    return DemoJob(prompt=prompt, job_id=job["id"], job=job)


def _poll_until_final(client: ApiClient, jobs: list[DemoJob], timeout_s: float) -> None:
    started = time.monotonic()
    deadline = started + timeout_s
    last_progress = 0.0
    while True:
        for job in jobs:
            if job.status not in FINAL_STATUSES:
                job.job = _fetch(client, job.job_id)

        now = time.monotonic()
        done = all(job.status in FINAL_STATUSES for job in jobs)
        if done or now - last_progress >= PROGRESS_INTERVAL_S or sys.stderr.isatty():
            _print_progress(jobs, now - started, final=done)
            last_progress = now
        if done:
            return
        if now > deadline:
            raise DemoError(f"jobs not finished after {timeout_s:.0f} s; raise --timeout or check the worker")
        time.sleep(POLL_INTERVAL_S)


def _fetch(client: ApiClient, job_id: str) -> dict[str, Any]:
    url = f"{client.url}/v1/jobs/{job_id}"
    try:
        response = requests.get(url, headers=client.headers, timeout=30)
    except requests.RequestException as error:
        raise DemoError(f"cannot read job {job_id} from {client.url}: {error}") from error
    if response.status_code != 200:
        raise DemoError(f"GET {url} returned status {response.status_code}: {response.text[:500]}")
    return response.json()


def _print_progress(jobs: list[DemoJob], elapsed_s: float, final: bool) -> None:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    finished = sum(counts.get(status, 0) for status in FINAL_STATUSES)
    detail = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    line = f"{finished}/{len(jobs)} jobs finished ({detail}) after {elapsed_s:.0f} s"
    if sys.stderr.isatty():
        print(f"\r{line}\x1b[K", end="\n" if final else "", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def _raise_keyboard_interrupt_on_sigterm() -> None:
    # `with Stack(...)` then stops the children on SIGTERM exactly as on Ctrl-C.
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _number(value: Any, pattern: str) -> str:
    if value is None:
        return "-"
    return pattern.format(value)


def _char_width(character: str) -> int:
    if unicodedata.combining(character):
        return 0
    return 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(character) for character in text)


def _fit(text: str, width: int, right: bool = False) -> str:
    """Cut ``text`` to ``width`` terminal columns (ending in '…' when cut) and pad it."""
    if _width(text) > width:
        kept_characters, used = [], 0
        for character in text:
            if used + _char_width(character) > width - 1:
                break
            kept_characters.append(character)
            used += _char_width(character)
        text = "".join(kept_characters) + "…"
    padding = " " * (width - _width(text))
    return padding + text if right else text + padding
