"""Client side of batches: the ``slotq batch submit | status | results`` commands.

Each command is also a function, so scripts and tests can call it without the command line.
Progress bars (tqdm, on stderr) show the upload in bytes, processing in finished jobs and the
download in lines. ``results`` resumes an interrupted download: it keeps the complete lines
already in the output file, drops a trailing partial line, and asks the server for the lines
after the last one it has (``after_line``).

Every request sends the API key ``api_key``, or ``SLOTQ_API_KEY`` when no key is given, as
``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests
from tqdm import tqdm

from slotq import SlotqError

#: Seconds between status polls while waiting for a batch.
DEFAULT_POLL_INTERVAL_S = 2.0
#: Seconds to wait for the server to accept a connection or send the next bytes.
DEFAULT_TIMEOUT_S = 60.0
#: Bytes read from the input file per upload chunk.
UPLOAD_CHUNK_BYTES = 262144
FINISHED_BATCH_STATUSES = ("completed", "cancelled")
MEDIA_TYPES = {".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson", ".json": "application/json"}
EXIT_FAILURE = 1


class BatchClientError(SlotqError):
    """A batch command failed; the message says why and what to do."""


@dataclass(frozen=True)
class DownloadSummary:
    """Outcome of `download_results`.

    Attributes:
        kept_lines: complete lines that were already in the output file.
        new_lines: lines this call appended.
        last_line: input line number of the last result in the file (0 when none).
        complete: the file now holds every result of the batch.
    """

    kept_lines: int
    new_lines: int
    last_line: int
    complete: bool


def default_url() -> str:
    """Return the API base URL from ``SLOTQ_API_HOST`` and ``SLOTQ_API_PORT``."""
    from slotq.settings import load_settings

    settings = load_settings()
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def submit_batch(
    url: str,
    path: str | Path,
    skip_invalid: bool = False,
    progress: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Upload ``path`` as a batch and return the server's 202 body (id, urls, skipped lines).

    The media type follows the file's suffix: ``.json`` is the JSON form, anything else JSONL.

    Raises:
        BatchClientError: the server rejected the upload; the message lists every problem.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
    except OSError as error:
        raise BatchClientError(f"cannot read {path}: {error.strerror}") from error

    media_type = MEDIA_TYPES.get(path.suffix.lower(), "application/x-ndjson")
    params = {"file_name": path.name}
    if skip_invalid:
        params["skip_invalid"] = "true"

    with handle, tqdm(total=size, unit="B", unit_scale=True, desc="upload", disable=not progress, file=sys.stderr) as bar:
        response = _request(
            "post",
            f"{url}/v1/batches",
            params=params,
            data=_ProgressReader(handle, size, bar.update),
            headers={"Content-Type": media_type},
            timeout=timeout_s,
            api_key=api_key,
        )
    if response.status_code != 202:
        raise BatchClientError(_describe_error(response))
    return response.json()


def batch_status(
    url: str, batch_id: str, timeout_s: float = DEFAULT_TIMEOUT_S, api_key: str | None = None
) -> dict[str, Any]:
    """Return ``GET /v1/batches/{id}``."""
    response = _request("get", f"{url}/v1/batches/{batch_id}", timeout=timeout_s, api_key=api_key)
    if response.status_code != 200:
        raise BatchClientError(_describe_error(response))
    return response.json()


def wait_for_batch(
    url: str,
    batch_id: str,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    max_wait_s: float | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Poll the batch until it is completed or cancelled, showing finished jobs; return its status.

    Raises:
        BatchClientError: ``max_wait_s`` passed first (None waits without limit).
    """
    started = time.monotonic()
    status = batch_status(url, batch_id, api_key=api_key)
    total = sum(status["counts"].values())
    with tqdm(total=total, unit="job", desc="processing", disable=not progress, file=sys.stderr) as bar:
        while True:
            bar.update(status["finished"] - bar.n)
            bar.set_postfix_str(status["status"], refresh=False)
            if status["status"] in FINISHED_BATCH_STATUSES:
                return status
            if max_wait_s is not None and time.monotonic() - started > max_wait_s:
                raise BatchClientError(
                    f"batch {batch_id} is still {status['status']} after {max_wait_s:.0f} s; "
                    f"run 'slotq batch status {batch_id}' later"
                )
            sleep(poll_interval_s)
            status = batch_status(url, batch_id, api_key=api_key)


def download_results(
    url: str,
    batch_id: str,
    output: str | Path,
    progress: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    api_key: str | None = None,
) -> DownloadSummary:
    """Append the batch's results that ``output`` lacks, resuming after its last complete line.

    Raises:
        BatchClientError: the server answered with an error, or ``output`` holds a line that
            is not a results line.
    """
    output = Path(output)
    kept_lines, last_line = _resume_point(output)

    response = _request(
        "get",
        f"{url}/v1/batches/{batch_id}/results",
        params={"after_line": last_line},
        stream=True,
        timeout=timeout_s,
        api_key=api_key,
    )
    if response.status_code != 200:
        raise BatchClientError(_describe_error(response))

    expected = int(response.headers.get("X-Slotq-Line-Count", "0"))
    complete = response.headers.get("X-Slotq-Results-Complete") == "true"
    new_lines = 0
    with response, open(output, "ab") as sink, tqdm(
        total=kept_lines + expected, initial=kept_lines, unit="line", desc="download", disable=not progress, file=sys.stderr
    ) as bar:
        for line in _complete_lines(response.iter_content(chunk_size=65536)):
            sink.write(line)
            new_lines += 1
            bar.update(1)
        sink.flush()
        os.fsync(sink.fileno())

    if new_lines != expected:
        raise BatchClientError(
            f"download ended after {new_lines} of {expected} lines; run the same command again to resume"
        )
    last_line = int(response.headers.get("X-Slotq-Last-Line", last_line))
    return DownloadSummary(kept_lines=kept_lines, new_lines=new_lines, last_line=last_line, complete=complete)


def add_batch_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``batch submit | status | results`` on the ``slotq`` command's subparsers."""
    parser = subparsers.add_parser("batch", help="submit a batch file, follow it and download its results")
    actions = parser.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    submit = actions.add_parser("submit", help="upload a JSONL (or .json) batch file")
    submit.add_argument("file", help="batch file: .jsonl lines {custom_id, request}, or the .json form")
    submit.add_argument("--skip-invalid", action="store_true", help="leave invalid lines out instead of rejecting the file")
    submit.add_argument("--wait", action="store_true", help="after the upload, show progress until the batch has finished")
    submit.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S, help="seconds between status polls with --wait")
    _add_common(submit)
    submit.set_defaults(handler=_run_submit)

    status = actions.add_parser("status", help="print a batch's status, counts and progress as JSON")
    status.add_argument("batch_id")
    _add_common(status)
    status.set_defaults(handler=_run_status)

    results = actions.add_parser("results", help="download the finished results as JSONL, resuming a partial file")
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", required=True, help="output JSONL file; an existing file is resumed, not overwritten")
    _add_common(results)
    results.set_defaults(handler=_run_results)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="API base URL (default: http://SLOTQ_API_HOST:SLOTQ_API_PORT)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _run_submit(args: argparse.Namespace) -> int:
    def run() -> int:
        url = args.url or default_url()
        accepted = submit_batch(url, args.file, skip_invalid=args.skip_invalid, progress=not args.no_progress)
        for skipped in accepted.get("skipped", []):
            print(_describe_line_problem(skipped), file=sys.stderr)
        print(f"batch {accepted['id']} accepted: {accepted['line_count']} jobs, {accepted['skipped_count']} lines skipped", file=sys.stderr)
        if args.wait:
            final = wait_for_batch(url, accepted["id"], args.poll_interval, progress=not args.no_progress)
            print(f"batch {accepted['id']} {final['status']}: {json.dumps(final['counts'])}", file=sys.stderr)
        print(accepted["id"])
        return 0

    return _guarded(run)


def _run_status(args: argparse.Namespace) -> int:
    def run() -> int:
        status = batch_status(args.url or default_url(), args.batch_id)
        print(json.dumps(status, ensure_ascii=False, indent=2))
        return 0

    return _guarded(run)


def _run_results(args: argparse.Namespace) -> int:
    def run() -> int:
        summary = download_results(args.url or default_url(), args.batch_id, args.output, progress=not args.no_progress)
        state = "complete" if summary.complete else "partial: the batch has unfinished lines; run again later to resume"
        print(
            f"{args.output}: {summary.kept_lines + summary.new_lines} lines "
            f"({summary.new_lines} new, up to input line {summary.last_line}), {state}",
            file=sys.stderr,
        )
        return 0

    return _guarded(run)


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except BatchClientError as error:
        print(f"slotq batch: {error}", file=sys.stderr)
        return EXIT_FAILURE


def _request(method: str, url: str, api_key: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {**kwargs.pop("headers", {}), **auth_headers(api_key)}
    try:
        return requests.request(method, url, headers=headers, **kwargs)
    except requests.RequestException as error:
        raise BatchClientError(f"request to {url} failed: {error}") from error


def auth_headers(api_key: str | None = None) -> dict[str, str]:
    """Return the ``Authorization`` header for ``api_key``, else ``SLOTQ_API_KEY``; empty when neither is set."""
    if api_key is None:
        from slotq.settings import load_settings

        api_key = load_settings().api_key
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _describe_error(response: requests.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"server answered {response.status_code}: {response.text[:500]}"

    lines = [f"server answered {response.status_code} {error['code']}: {error['message']}"]
    if response.status_code == 401:
        lines.append("  set SLOTQ_API_KEY to a key from 'slotq keys create --tenant NAME'")
    for detail in error.get("details", []):
        lines.append("  " + _describe_line_problem(detail))
    if "skip_invalid=true" in error["message"]:
        lines.append("  run 'slotq batch submit' again with --skip-invalid to leave the invalid lines out")
    return "\n".join(lines)


def _describe_line_problem(detail: dict[str, Any]) -> str:
    where = f"line {detail['line']}" if "line" in detail else "batch"
    if detail.get("custom_id") is not None:
        where += f" ({detail['custom_id']})"
    problems = detail.get("errors") or [detail]
    return "; ".join(f"{where}: {_describe_problem(problem)}" for problem in problems)


def _describe_problem(problem: dict[str, Any]) -> str:
    # A problem with the whole line (not JSON, too long) has no field value worth showing.
    if problem.get("field") == "line":
        return str(problem["message"])
    return f"{problem['field']}={problem['value']!r} {problem['message']}"


def _resume_point(output: Path) -> tuple[int, int]:
    """Return (complete lines, last input line number) of ``output``, cutting a partial last line."""
    if not output.exists():
        return 0, 0

    kept = 0
    last_line = 0
    complete_bytes = 0
    with open(output, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                last_line = int(json.loads(raw)["line"])
            except (ValueError, KeyError, TypeError) as error:
                raise BatchClientError(
                    f"{output} line {kept + 1} is not a results line; choose another output file"
                ) from error
            kept += 1
            complete_bytes += len(raw)

    if complete_bytes != output.stat().st_size:
        # The previous download stopped inside a line; that line is fetched again.
        with open(output, "r+b") as handle:
            handle.truncate(complete_bytes)
    return kept, last_line


def _complete_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the newline-terminated lines of a byte stream; a trailing partial line is dropped."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line + b"\n"


class _ProgressReader:
    """File wrapper for requests' ``data=`` that reports bytes read; ``len`` sets Content-Length."""

    def __init__(self, handle: IO[bytes], size: int, on_read: Callable[[int], Any]):
        self._handle = handle
        self._size = size
        self._on_read = on_read

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(UPLOAD_CHUNK_BYTES if size is None or size < 0 else size)
        self._on_read(len(data))
        return data
