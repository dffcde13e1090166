"""Alembic migrations against the ORM models, on real Postgres and SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from slotq.store import Base, make_engine
from slotq.store.migrate import alembic_config, current_revision, downgrade, upgrade


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_differences(engine: Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_postgres_schema_matches_models(postgres_engine: Engine, postgres_url: str) -> None:
    assert current_revision(postgres_url) == head_revision()
    assert schema_differences(postgres_engine) == []


def test_sqlite_schema_matches_models(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)

    assert current_revision(sqlite_url) == head_revision()
    assert schema_differences(engine) == []
    engine.dispose()


def test_indexes_created(postgres_engine: Engine) -> None:
    indexes = {index["name"]: index["column_names"] for index in inspect(postgres_engine).get_indexes("jobs")}

    assert indexes["ix_jobs_created_at_id"] == ["created_at", "id"]
    assert indexes["ix_jobs_status_created_at_id"] == ["status", "created_at", "id"]


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cycle.db'}"
    upgrade(url)

    downgrade(url, "base")
    engine = make_engine(url)
    assert "jobs" not in inspect(engine).get_table_names()
    assert current_revision(url) is None

    upgrade(url)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def test_upgrade_twice_is_harmless(sqlite_url: str) -> None:
    upgrade(sqlite_url)

    assert current_revision(sqlite_url) == head_revision()


def test_upgrade_creates_sqlite_folder(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'nested' / 'slotq.db'}"

    upgrade(url)

    assert (tmp_path / "fresh" / "nested" / "slotq.db").is_file()
