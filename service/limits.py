"""Load limits: the API answers, or sheds load with a quick 503, and never locks up.

The lock-up this prevents (issue 14): sync endpoints and dependencies run on anyio's thread pool
(40 threads by default) and take connections from SQLAlchemy's pool (5 + 10 overflow by
default, 30 s checkout timeout). Under 200 clients, 40 threads waited on 15 connections whose
holders needed a thread to finish and close their sessions; every wait ran to the 30 s timeout,
and the backlog kept the process unresponsive for minutes after the load stopped.

Now three numbers are sized together from ``C = SIFT_MAX_CONCURRENT_REQUESTS`` (per process):

- **Admission** (:class:`ConcurrencyLimitMiddleware`, outside routing): at most ``C`` requests
  run at once. One beyond waits on the event loop, holding no thread and no connection, up to
  ``SIFT_REQUEST_QUEUE_TIMEOUT_S`` in FIFO order, then gets a 503 ``overloaded`` with
  ``Retry-After``. ``/healthz`` and ``/metrics`` are never limited (``/healthz`` is async: it
  needs no thread either). ``/readyz`` is limited: it takes a connection.
- **Threads**: ``T = C + THREAD_HEADROOM``. A request's dependencies are async
  (``service.auth.dependencies``, ``service.db.session.get_db``); it takes a thread for its
  endpoint, for the API-key lookup when the key is not cached, and to hand its connection
  back, one after another, so it holds at most one thread at a time; the headroom serves
  ``/metrics`` and any other ``to_thread`` user. Set on anyio's default limiter when the
  event loop starts (the lifespan, or the first request where no lifespan runs).
- **Database pool**: ``pool_size = C``, ``max_overflow = POOL_RESERVE``, checkout timeout
  ``SIFT_DB_POOL_TIMEOUT_S`` (:func:`pool_options`). A request holds at most one connection at
  a time: its one session (the key lookup commits and hands its connection back before the
  endpoint takes one; ``service.queue.track_task`` opens its session after the endpoint's
  commit). So ``C`` admitted requests never wait on the pool; the reserve is for what runs
  beside them in this process (the embedded worker and its recovery sweeper), and a checkout
  that still times out is a 503 with ``Retry-After`` (``service.errors``), not a hang.

With ``T >= C`` and ``pool_size >= C`` neither resource can be exhausted by requests, so the
cycle "threads wait for connections held by requests that wait for threads" cannot form.

Sizing: requests are CPU-bound Python (the GIL) with sub-millisecond loopback queries, so more
than a few threads per core add contention, not throughput; the default ``C = 16`` is measured
in docs/benchmarks.md. Throughput grows with processes, not threads: ``sift serve --workers N``
(``SIFT_API_WORKERS``) runs N processes of about a core each on one port. Postgres needs
``processes x (C + POOL_RESERVE)`` connections for the API (plus the workers' own) under its
``max_connections`` (100 by default): 2 uvicorn processes x 24 = 48. On SQLite the same pool
applies (a connection is a file handle); WAL lets reads run beside the one writer, and a writer
waiting for the write lock (``BEGIN IMMEDIATE``, up to the busy timeout in
``service.db.session``) holds its slot, so a write storm sheds requests with 503s instead of
queueing without bound.

Metrics: ``sift_http_requests_shed_total`` (503 ``overloaded`` answers) and
``sift_http_requests_waiting`` (requests waiting for a slot now).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings, app_settings
from service.errors import Overloaded

THREAD_HEADROOM = 8
"""Request threads beyond ``C``: for ``/metrics`` and other thread users outside the limit."""

POOL_RESERVE = 8
"""Pooled connections beyond ``C`` (``max_overflow``): the embedded worker, its sweeper."""

UNLIMITED_PATHS = frozenset({"/healthz", "/metrics"})
"""Never limited: a probe and the scraper must see an overloaded process."""

SHED = Counter("sift_http_requests_shed", "Requests answered 503 overloaded by the limit")
WAITING = Gauge(
    "sift_http_requests_waiting",
    "Requests waiting for a slot of the limit",
    multiprocess_mode="livesum",
)


def pool_options(url: str, settings: Settings) -> dict[str, Any]:
    """``create_engine`` pool arguments for ``url`` (module docstring); none for an in-memory
    SQLite database, whose single-connection pool has nothing to size."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:"):
        return {}
    return {
        "pool_size": settings.max_concurrent_requests,
        "max_overflow": POOL_RESERVE,
        "pool_timeout": settings.db_pool_timeout_s,
    }


@dataclass
class _Gate:
    """One event loop's admission state."""

    slots: anyio.Semaphore
    wait_s: float

    async def enter(self) -> bool:
        """Take a slot, waiting up to ``wait_s``; False if none freed in time."""
        try:
            self.slots.acquire_nowait()
            return True
        except anyio.WouldBlock:
            if self.wait_s <= 0:
                return False
        WAITING.inc()
        try:
            with anyio.move_on_after(self.wait_s):
                await self.slots.acquire()  # cancellation-safe: a slot granted late is returned
                return True
            return False
        finally:
            WAITING.dec()


_OVERLOADED_BODY = json.dumps(
    Overloaded(
        "the API is at its limit of concurrent requests; retry after Retry-After seconds"
    ).body()
).encode()


class ConcurrencyLimitMiddleware:
    """Pure ASGI: admits at most ``max_concurrent_requests`` HTTP requests at once (module
    docstring), and sizes anyio's default thread limiter when the event loop starts."""

    def __init__(self, app: ASGIApp, *, settings: Callable[[], Settings]) -> None:
        self.app = app
        self._settings = settings
        # per event loop: a server has one, but each TestClient runs its own
        self._gate: anyio.lowlevel.RunVar[_Gate] = anyio.lowlevel.RunVar(f"sift_gate_{id(self)}")

    def _current_gate(self) -> _Gate:
        gate = self._gate.get(None)
        if gate is None:
            settings = self._settings()
            limit = settings.max_concurrent_requests
            gate = _Gate(anyio.Semaphore(limit), settings.request_queue_timeout_s)
            self._gate.set(gate)
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = limit + THREAD_HEADROOM
        return gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._current_gate()
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http" or _route_path(scope) in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        gate = self._current_gate()
        if not await gate.enter():
            SHED.inc()
            await _send_overloaded(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.slots.release()


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


async def _send_overloaded(send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_OVERLOADED_BODY)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (Overloaded.headers or {}).items()),
    ]
    start = {"type": "http.response.start", "status": Overloaded.status_code, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY})


def install_limits(app: FastAPI) -> None:
    """Add the request limit (outermost of the app's own middleware: inside the observability
    layer, so a 503 it answers is logged and counted)."""
    app.add_middleware(
        ConcurrencyLimitMiddleware,
        settings=lambda: app_settings(app),
    )
