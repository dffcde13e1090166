"""Engines and sessions for the job store, on Postgres or SQLite.

Engines are safe to inherit across ``fork()``: a child process drops the pool it inherited
(without closing the parent's sockets) and opens its own connections on first use. This covers
Celery prefork workers and gunicorn workers whatever the order of import and fork.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

#: Seconds a SQLite connection waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30
#: Seconds psycopg2 waits for a Postgres connection, unless the URL sets connect_timeout.
POSTGRES_CONNECT_TIMEOUT_S = 5

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def dumps_json(value: Any) -> str:
    """Serialise JSON columns with non-ASCII text kept as is (Japanese stays readable)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with pre-ping, fork safety and unescaped JSON.

    For a SQLite file URL the parent folder is created, WAL mode lets the API read while a
    worker writes, and writers wait up to `SQLITE_BUSY_TIMEOUT_S` for the lock.
    Extra keyword arguments go to ``sqlalchemy.create_engine``.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))

    if parsed.get_backend_name() == "sqlite":
        _create_sqlite_folder(parsed.database)
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    elif parsed.get_driver_name() == "psycopg2" and "connect_timeout" not in parsed.query:
        connect_args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S)

    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        json_serializer=dumps_json,
        connect_args=connect_args,
        **kwargs,
    )
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)

    _engines.add(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def _create_sqlite_folder(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _reset_pools_after_fork() -> None:
    # close=False: the sockets belong to the parent, which keeps using them.
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_reset_pools_after_fork)
