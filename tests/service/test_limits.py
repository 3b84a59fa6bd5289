"""The request limit (service/limits.py): beyond it a quick 503 with Retry-After, /healthz
always answers, and the API serves again as soon as the load is gone; a timed-out pool
checkout is a 503 too, never a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.session import get_db, make_engine
from service.limits import POOL_RESERVE, THREAD_HEADROOM, pool_options


@pytest.fixture()
def limited(settings: Settings) -> Settings:
    settings.max_concurrent_requests = 2
    settings.request_queue_timeout_s = 0.0
    return settings


@pytest.fixture()
def release(app: FastAPI, limited: Settings) -> Iterator[tuple[threading.Event, list[str]]]:
    """A slow route (``GET /test-slow``) that holds its request thread until released."""
    gate = threading.Event()
    entered: list[str] = []

    @app.get("/test-slow")
    def slow() -> dict[str, str]:
        entered.append(threading.current_thread().name)
        if not gate.wait(10):
            raise RuntimeError("never released")
        return {"status": "done"}

    yield gate, entered
    gate.set()


def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_a_request_beyond_the_limit_is_a_quick_503_and_the_api_recovers(
    limited: Settings, client: TestClient, release: tuple[threading.Event, list[str]]
) -> None:
    gate, entered = release
    with ThreadPoolExecutor(2) as pool:
        slow: list[Future[Any]] = [pool.submit(lambda: client.get("/test-slow")) for _ in range(2)]
        _wait_for(lambda: len(entered) == 2)

        started = time.perf_counter()
        shed = client.get("/v1/valuations")
        elapsed = time.perf_counter() - started
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["code"] == "overloaded"
        assert elapsed < 1.0

        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert client.get("/test-slow").status_code == 503  # the slow route is limited too

        gate.set()
        assert [f.result(10).status_code for f in slow] == [200, 200]

    assert client.get("/v1/valuations").status_code == 200
    assert len(entered) == 2  # the shed requests never reached a route


def test_a_request_waits_for_a_slot_up_to_the_queue_timeout(
    limited: Settings,
    make_client: Callable[..., TestClient],
    release: tuple[threading.Event, list[str]],
) -> None:
    limited.max_concurrent_requests = 1
    limited.request_queue_timeout_s = 5.0
    client = make_client()  # its event loop starts now, with these settings
    gate, entered = release
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: client.get("/test-slow"))
        _wait_for(lambda: len(entered) == 1)
        waiting = pool.submit(lambda: client.get("/v1/valuations"))
        time.sleep(0.2)
        assert not waiting.done()  # queued on the event loop, not shed
        gate.set()
        assert first.result(10).status_code == 200
        assert waiting.result(10).status_code == 200


def test_the_thread_pool_and_the_database_pool_are_sized_from_the_limit(
    limited: Settings, client: TestClient, database_url: str
) -> None:
    import anyio.to_thread

    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    assert client.portal is not None
    assert client.portal.call(tokens) == 2 + THREAD_HEADROOM
    assert pool_options(database_url, limited) == {
        "pool_size": 2,
        "max_overflow": POOL_RESERVE,
        "pool_timeout": limited.db_pool_timeout_s,
    }
    assert pool_options("sqlite://", limited) == {}  # one in-memory connection: nothing to size
    engine = make_engine(database_url, **pool_options(database_url, limited))
    try:
        assert engine.pool.size() == 2  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_an_exhausted_database_pool_is_a_quick_503(
    app: FastAPI, client: TestClient, database_url: str
) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)

    def tiny_pool_db(request: Request) -> Iterator[Session]:
        with Session(bind=engine) as session:
            yield session

    app.dependency_overrides[get_db] = tiny_pool_db
    held = engine.connect()  # the pool's only connection
    try:
        started = time.perf_counter()
        response = client.get("/v1/valuations")
        assert time.perf_counter() - started < 2.0
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "unavailable"
    finally:
        held.close()
        engine.dispose()
