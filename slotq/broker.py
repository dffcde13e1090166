"""Read-only look at the Celery broker: how many messages wait in a queue.

Two transports are supported: Redis (``redis://``, ``rediss://``, ``redis+socket://``) and kombu's
SQLAlchemy transport (``sqla+<SQLAlchemy URL>``, for example ``sqla+sqlite:///broker.db`` of the
embedded mode). Nothing here writes to the broker or declares a queue, so calling it never
creates a queue, a table or a broker file.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from slotq import SlotqError

REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")
SQLALCHEMY_PREFIX = "sqla+"

#: Table names of kombu's SQLAlchemy transport without the ``queue_tablename`` and
#: ``message_tablename`` transport options, which slot-queue never sets.
KOMBU_QUEUE_TABLE = "kombu_queue"
KOMBU_MESSAGE_TABLE = "kombu_message"

# kombu's SQLAlchemy transport keeps delivered messages with visible = false until they are
# acknowledged, so only visible rows are waiting.
_WAITING_MESSAGES_SQL = text(
    f"SELECT count(*) FROM {KOMBU_MESSAGE_TABLE} AS m JOIN {KOMBU_QUEUE_TABLE} AS q ON m.queue_id = q.id "
    "WHERE q.name = :queue AND m.visible = :visible"
)


class BrokerError(SlotqError):
    """The broker could not be read: unreachable, timed out, or a URL this module cannot read."""


def queue_depth(broker_url: str, queue: str, timeout_s: float = 2.0) -> int:
    """Return the number of messages waiting in Celery queue ``queue`` of the broker.

    Messages that a worker has taken but not yet acknowledged are not counted. A queue that was
    never declared, and a SQLite broker file that no process has created yet, have depth 0.
    ``timeout_s`` bounds each connection attempt and each read.

    Raises:
        BrokerError: the broker is unreachable, did not respond within ``timeout_s``, or the
            URL's transport is neither Redis nor kombu's SQLAlchemy transport.
        ValueError: ``timeout_s`` is not a positive, finite number.
    """
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s={timeout_s!r} is invalid: must be a positive number of seconds")

    if broker_url.startswith(REDIS_SCHEMES):
        return _redis_queue_depth(broker_url, queue, timeout_s)
    if broker_url.startswith(SQLALCHEMY_PREFIX):
        return _sqlalchemy_queue_depth(broker_url, queue, timeout_s)
    raise BrokerError(
        f"cannot read the queue depth of broker {_safe_url(broker_url)}: only redis://, rediss://, "
        "redis+socket:// and sqla+ (kombu SQLAlchemy transport) URLs are supported"
    )


def _redis_queue_depth(broker_url: str, queue: str, timeout_s: float) -> int:
    # kombu's Redis transport keeps one list per priority step. Messages without a priority go
    # to the list named after the queue; the others to "<queue>\x06\x16<step>".
    keys = [queue] + [f"{queue}{RedisChannel.sep}{step}" for step in PRIORITY_STEPS if step]
    client = _redis_client(broker_url, timeout_s)
    try:
        with client.pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.llen(key)
            lengths = pipeline.execute()
    except redis.RedisError as error:
        raise BrokerError(
            f"broker {_safe_url(broker_url)} is unreachable or did not respond within {timeout_s} s: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        client.close()
    return int(sum(lengths))


def _redis_client(broker_url: str, timeout_s: float) -> redis.Redis:
    url = broker_url
    if url.startswith("redis+socket://"):
        url = _unix_socket_url(url)
    try:
        # No retries, so one failed attempt fails the call within timeout_s.
        return redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as error:
        raise BrokerError(f"invalid Redis broker URL {_safe_url(broker_url)}: {error}") from error


def _unix_socket_url(broker_url: str) -> str:
    """Turn kombu's ``redis+socket:///path?virtual_host=N`` into redis-py's ``unix:///path?db=N``."""
    # NOTE: no test reads a queue from a running Redis over a Unix socket, only a missing socket.
    parts = urlsplit(broker_url)
    database = parse_qs(parts.query).get("virtual_host", ["0"])[0] or "0"
    return f"unix://{quote(parts.path)}?db={quote(database)}"


def _sqlalchemy_queue_depth(broker_url: str, queue: str, timeout_s: float) -> int:
    if _is_fresh_sqlite_broker(broker_url):
        return 0

    engine = _sqlalchemy_engine(broker_url, timeout_s)
    try:
        with engine.connect() as connection:
            # A broker that no process has connected to yet has no tables and no messages.
            if not inspect(connection).has_table(KOMBU_QUEUE_TABLE):
                return 0
            count = connection.execute(_WAITING_MESSAGES_SQL, {"queue": queue, "visible": True}).scalar_one()
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise BrokerError(
            f"broker {_safe_url(broker_url)} is unreachable or did not respond within {timeout_s} s: {reason}"
        ) from error
    finally:
        engine.dispose()
    return int(count)


def _is_fresh_sqlite_broker(broker_url: str) -> bool:
    """Return True for a SQLite broker file that does not exist yet in an existing folder.

    kombu creates such a file on its first connection, so it is a valid broker with no messages.
    A missing folder is an error, because SQLite cannot create the file there.
    """
    try:
        url = make_url(broker_url[len(SQLALCHEMY_PREFIX):])
    except ArgumentError:
        return False
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return False
    path = Path(url.database)
    return not path.exists() and path.parent.is_dir()


def _sqlalchemy_engine(broker_url: str, timeout_s: float) -> Engine:
    database_url = broker_url[len(SQLALCHEMY_PREFIX):]
    try:
        url = make_url(database_url)
    except ArgumentError as error:
        raise BrokerError(f"invalid SQLAlchemy broker URL {_safe_url(broker_url)}: {error}") from error

    if url.get_backend_name() == "sqlite":
        path = url.database
        if not path or path == ":memory:":
            raise BrokerError(f"invalid SQLite broker URL {_safe_url(broker_url)}: it names no database file")
        # Read-only, so a missing file is an error instead of a new empty broker. The timeout is
        # SQLite's wait for a lock that a writer holds.
        file_uri = f"file:{quote(path)}?mode=ro"
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(file_uri, uri=True, timeout=timeout_s, check_same_thread=False),
            poolclass=NullPool,
        )

    connect_args = {}
    if url.get_backend_name() == "postgresql":
        # libpq takes whole seconds and treats values below 2 as 2.
        connect_args = {"connect_timeout": max(2, math.ceil(timeout_s)),
                        "options": f"-c statement_timeout={math.ceil(timeout_s * 1000)}"}
    # NOTE: other SQLAlchemy dialects get no connection or statement timeout here, so
    # timeout_s is not enforced for them.
    try:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except (ArgumentError, ImportError) as error:
        raise BrokerError(f"cannot open SQLAlchemy broker {_safe_url(broker_url)}: {error}") from error


def _safe_url(url: str) -> str:
    """Return ``url`` with any password masked, for messages and logs."""
    return maybe_sanitize_url(url)
