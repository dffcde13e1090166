"""Schema migrations with Alembic, for ``slotq db upgrade`` and the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from slotq.store.engine import make_engine

#: Migrations folder of a source checkout; an installed package is found by import instead.
_CHECKOUT_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def migrations_folder() -> Path:
    """Return the folder holding Alembic's ``env.py`` and ``versions/``."""
    if (_CHECKOUT_MIGRATIONS / "env.py").is_file():
        return _CHECKOUT_MIGRATIONS
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Alembic migrations folder not found next to slotq or as a package")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(url: str) -> Config:
    """Return an Alembic config that runs this project's migrations on ``url``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_folder()))
    # Passed as an attribute, not a main option, because configparser would treat the '%' of
    # URL-encoded passwords as interpolation.
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations to ``url`` up to ``revision``; a database already there is unchanged."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Revert migrations on ``url`` down to ``revision`` (``base`` drops every table)."""
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """Return the revision ``url`` is at, or None for a database never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
