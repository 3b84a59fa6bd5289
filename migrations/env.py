"""Alembic environment.

Database URL, first found: ``-x database_url=...``, ``config.attributes["database_url"]``
(:func:`service.db.migrate.upgrade_head`), then ``SIFT_DATABASE_URL`` via the settings.
A connection passed in ``config.attributes["connection"]`` is used as is.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from service.config import get_settings
from service.db.models import Base
from service.db.session import make_engine, normalize_database_url

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("database_url")
        or config.attributes.get("database_url")
        or get_settings().database_url
    )
    return normalize_database_url(url).render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # A batch ALTER on SQLite rebuilds the table (copy, drop, rename); with
                # foreign keys on, the drop would cascade to every row that refers to it
                # (a valuation's scores, selections, samples). The pragma is a no-op inside
                # a transaction, so it goes to the driver before SQLAlchemy begins one.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            _configure(connection)
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:  # leaving the block rolls the migration back
                    raise RuntimeError(f"migrations left broken foreign keys: {broken[:5]}")
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
