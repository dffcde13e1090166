"""Time the acceptance of a generated batch upload through the HTTP API.

The script creates a private Postgres database, migrates it, starts the Flask app with the real
Celery enqueue on Redis (a private queue name, so no worker consumes the messages) behind
Werkzeug's threaded server, and uploads a generated JSONL batch with ``requests``. The time is
measured on the client, from the first byte sent to the 202 response, so it covers parsing,
validation and the bulk insert. The server sends the jobs to Redis after writing the response;
the script also reports when the last message arrived there ("all sent"). Afterwards it checks
that the database contains one job per line and Redis one message per line, then drops both.

Usage:
    .venv/bin/python bench/batch_submit.py [--lines 10000] [--repeat 3]
        [--postgres-url postgresql+psycopg2://postgres@127.0.0.1:5432/test]
        [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app  # noqa: E402
from slotq.settings import Settings  # noqa: E402
from slotq.keys import create_key  # noqa: E402
from slotq.store import Job, JobRepository, make_engine  # noqa: E402
from slotq.store.migrate import upgrade  # noqa: E402

SCHEMA = {
    "type": "object",
    "required": ["品名", "数量"],
    "properties": {"品名": {"type": "string"}, "数量": {"type": "integer", "minimum": 1}},
}


def generate_upload(lines: int) -> bytes:
    """Return a JSONL upload with a header line and ``lines`` chat requests in Japanese."""
    header = {
        "batch": {
            "defaults": {"generation": {"max_new_tokens": 96}, "slot": {"steps": 3}},
            "response_format": {"type": "json_schema", "schema": SCHEMA},
        }
    }
    rows = [json.dumps(header, ensure_ascii=False)]
    for index in range(lines):
        request = {
            "messages": [
                {"role": "system", "content": "注文メールから品名と数量をJSONだけで答えてください。"},
                {"role": "user", "content": f"株式会社サンプル{index}です。ボールペンを{index % 50 + 1}箱お願いします。"},
            ],
            "metadata": {"番号": index},
        }
        rows.append(json.dumps({"custom_id": f"order-{index:05d}", "request": request}, ensure_ascii=False))
    return ("\n".join(rows) + "\n").encode("utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000, help="request lines per upload")
    parser.add_argument("--repeat", type=int, default=3, help="uploads to time")
    parser.add_argument("--postgres-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    suffix = uuid.uuid4().hex[:10]
    database = f"slotq_bench_{suffix}"
    queue = f"slotq-bench-{suffix}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    url = make_url(args.postgres_url).set(database=database).render_as_string(hide_password=False)
    broker = redis.Redis.from_url(args.redis_url)

    try:
        return _run(args, url, queue, broker)
    finally:
        broker.delete(queue)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def _run(args: argparse.Namespace, url: str, queue: str, broker: redis.Redis) -> int:
    upgrade(url)
    settings = Settings(database_url=url, broker_url=args.redis_url, queue=queue, log_level="WARNING")
    engine = make_engine(url)
    app = create_app(settings, repository=JobRepository(engine))
    api_key = create_key("bench", repository=JobRepository(engine)).key
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"

    body = generate_upload(args.lines)
    print(f"upload: {args.lines} lines, {len(body) / 1e6:.1f} MB")
    durations = []
    try:
        for attempt in range(1, args.repeat + 1):
            messages_before = broker.llen(queue)
            started = time.perf_counter()
            response = requests.post(
                f"{base}/v1/batches",
                data=body,
                headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {api_key}"},
                timeout=300,
            )
            elapsed = time.perf_counter() - started
            if response.status_code != 202:
                print(f"upload {attempt} failed: {response.status_code} {response.text[:500]}", file=sys.stderr)
                return 1
            durations.append(elapsed)
            all_sent = _wait_for_messages(broker, queue, messages_before + args.lines) - started
            print(f"upload {attempt}: accepted in {elapsed:.2f} s ({args.lines / elapsed:,.0f} lines/s), all sent after {all_sent:.2f} s")
    finally:
        server.shutdown()

    with engine.connect() as connection:
        stored = connection.scalar(select(func.count()).select_from(Job))
    queued_messages = broker.llen(queue)
    engine.dispose()
    expected = args.lines * args.repeat
    print(f"jobs stored: {stored} (expected {expected}); messages in Redis queue: {queued_messages}")
    median = statistics.median(durations)
    print(f"median: {median:.2f} s, {args.lines / median:,.0f} lines/s")
    return 0 if stored == expected == queued_messages else 1


def _wait_for_messages(broker: redis.Redis, queue: str, expected: int, timeout_s: float = 120.0) -> float:
    """Poll the Redis queue until it contains ``expected`` messages; return the perf_counter time."""
    deadline = time.perf_counter() + timeout_s
    while broker.llen(queue) < expected and time.perf_counter() < deadline:
        time.sleep(0.01)
    return time.perf_counter()


if __name__ == "__main__":
    raise SystemExit(main())
