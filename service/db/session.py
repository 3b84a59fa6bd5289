"""Engine and sessions.

Sessions commit at the boundary: the endpoint (request) or the Celery task, never inside a
service function. Outside a request use :func:`session_scope`::

    with session_scope() as session:
        job = session.get(Job, job_id)
        ...                      # committed on leaving the block, rolled back on error

SQLite has one writer at a time. A transaction that reads and then writes fails at once with
"database is locked" (no busy wait can help: its snapshot is stale) if another connection
committed in between; so a session that will write asks for ``BEGIN IMMEDIATE``
(:func:`for_writes`), which takes the write lock first, waiting up to the busy timeout. Request
sessions do so for every method but GET/HEAD/OPTIONS (:func:`get_db`). Reads stay deferred:
in WAL mode they never wait for a writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings
from service.limits import pool_options  # the pool is sized with the request limit


def normalize_database_url(url: str | URL) -> URL:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (psycopg2 is not installed)."""
    u = make_url(url) if isinstance(url, str) else url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for the write lock before "database is locked" (then
the API answers 503 with ``Retry-After``; a worker retries)."""

SQLITE_BEGIN = "sift_sqlite_begin"
"""Execution option: the SQLite ``BEGIN`` mode of a connection's transactions (``DEFERRED``,
the default, or ``IMMEDIATE``); other databases ignore it."""

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine; for SQLite: foreign keys on, WAL, busy timeout, real SAVEPOINTs, and
    ``BEGIN IMMEDIATE`` for connections of :func:`for_writes`."""
    u = normalize_database_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, **kwargs)

    database = u.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = {
        "check_same_thread": False,
        "timeout": SQLITE_BUSY_TIMEOUT_S,
        **kwargs.pop("connect_args", {}),
    }
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
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise ValueError(f"{SQLITE_BEGIN} must be DEFERRED or IMMEDIATE, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@lru_cache(maxsize=8)
def for_writes(engine: Engine) -> Engine:
    """``engine`` (same pool) whose SQLite transactions begin IMMEDIATE: they take the write
    lock before their first read, so reading then writing never fails on a stale snapshot.
    Only for sessions that commit before any other session of the same thread writes (the
    lock is held until then)."""
    return engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})


@lru_cache(maxsize=8)
def for_reads(engine: Engine) -> Engine:
    """``engine`` (same pool) for sessions that only read: on Postgres in autocommit, which
    saves the BEGIN and ROLLBACK round trips of a transaction that would hold nothing (at READ
    COMMITTED, Postgres's default, every statement takes its own snapshot either way). SQLite
    keeps its deferred transaction: in-process, it costs nothing, and gives a WAL snapshot."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@lru_cache
def _engine_for(url: str) -> Engine:
    return make_engine(url, **pool_options(url, get_settings()))


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


async def get_db(request: Request) -> AsyncIterator[Session]:
    """Request-scoped session; the endpoint commits, an exception rolls back. A request that
    may write (any method but GET/HEAD/OPTIONS) begins its transactions IMMEDIATE on SQLite;
    a read runs in autocommit on Postgres (:func:`for_reads`).

    Async, so that making and closing the session costs no thread hop unless the session
    holds a connection: handing that back (a rollback) is I/O, done in a thread, shielded from
    cancellation so a disconnected client cannot leak it."""
    engine = get_engine()
    engine = for_reads(engine) if request.method in READ_METHODS else for_writes(engine)
    session = SessionLocal(bind=engine)
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):  # run_sync alone checkpoints before it shields
                await anyio.to_thread.run_sync(session.close)
        else:
            session.close()


RawSessionDep = Annotated[Session, Depends(get_db)]
"""A session that acts for no tenant: only for what sits outside ``/v1`` (health checks).
``/v1`` endpoints take ``service.auth.dependencies.SessionDep``, scoped to the key's tenant."""
