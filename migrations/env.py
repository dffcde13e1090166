"""Alembic environment: migrates the job store at the configured database URL.

The URL comes from, in order: the ``database_url`` attribute set by `slotq.store.migrate`,
``alembic -x url=...``, and ``SLOTQ_DATABASE_URL`` through `slotq.settings.load_settings`.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy.pool import NullPool

from slotq.settings import load_settings
from slotq.store.engine import make_engine
from slotq.store.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    """Return the URL to migrate."""
    url = config.attributes.get("database_url")
    if not url:
        url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        url = load_settings().database_url
    return url


def run_migrations_offline() -> None:
    """Write the SQL of the migrations to stdout (``alembic upgrade head --sql``)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply the migrations over a connection."""
    engine = make_engine(database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most columns in place, so later migrations copy the table.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
