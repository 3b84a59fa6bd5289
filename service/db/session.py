"""Engine and sessions.

Sessions commit at the boundary: the endpoint (request) or the Celery task, never inside a
service function. Outside a request use :func:`session_scope`::

    with session_scope() as session:
        job = session.get(Job, job_id)
        ...                      # committed on leaving the block, rolled back on error
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings


def normalize_database_url(url: str | URL) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (psycopg2 is not installed)."""
    u = make_url(url) if isinstance(url, str) else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine; for SQLite: foreign keys on, WAL, busy timeout, real SAVEPOINTs."""
    u = normalize_database_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, **kwargs)

    database = u.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"check_same_thread": False, "timeout": 30, **kwargs.pop("connect_args", {})}
    engine = create_engine(u, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, emit BEGIN so SAVEPOINT and rollback behave.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if database and database != ":memory:":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


@lru_cache
def _engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    """The process-wide engine for ``settings.database_url`` (created on first use)."""
    return _engine_for(get_settings().database_url)


class _LazySessionMaker(sessionmaker[Session]):
    """A sessionmaker bound, at call time, to :func:`get_engine` unless given ``bind``."""

    def __call__(self, **local_kw: Any) -> Session:
        local_kw.setdefault("bind", get_engine())
        return super().__call__(**local_kw)


SessionLocal = _LazySessionMaker(autoflush=False, expire_on_commit=False)
"""``SessionLocal()`` -- a new session on the settings' database. Commit it yourself, or use
:func:`session_scope`, which does."""


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = SessionLocal(bind=engine or get_engine())
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_db() -> Iterator[Session]:
    """Request-scoped session; the endpoint commits, an exception rolls back."""
    session = SessionLocal()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


RawSessionDep = Annotated[Session, Depends(get_db)]
"""A session that acts for no tenant: only for what sits outside ``/v1`` (health checks).
``/v1`` endpoints take ``service.auth.dependencies.SessionDep``, scoped to the key's tenant."""
