"""Bad input of every kind is a 4xx in the error shape naming the field, with the status in
the OpenAPI document; a busy database is a 503 with ``Retry-After``, never a 500."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.auth import keys
from service.config import get_settings
from service.db import session as session_module
from service.db.migrate import upgrade_head
from service.db.models import Model
from service.db.session import for_writes, make_engine, session_scope
from service.main import create_app
from service.queue import get_queue
from tests.service.conftest import RecordingQueue, finish_valuation
from workers.contracts import JSON_INT_MAX

LIST_ROUTES = ["/v1/datasets", "/v1/models", "/v1/valuations", "/v1/score-sets"]


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.mark.parametrize("route", LIST_ROUTES)
def test_an_offset_past_the_bound_is_a_422_naming_it(client: TestClient, route: str) -> None:
    assert client.get(route, params={"offset": JSON_INT_MAX}).status_code == 200
    for offset in (JSON_INT_MAX + 1, 2**63, 2**64):  # 2**63: the driver's overflow, once a 500
        error = _error(client.get(route, params={"offset": offset}), 422)
        assert error["field"] == "query.offset"


def test_the_document_states_this_deployments_page_size(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    limit = next(
        p for p in document["paths"]["/v1/models"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"]["anyOf"][0]["maximum"] == 50  # the tests' SIFT_PAGE_SIZE_MAX
    assert _error(client.get("/v1/models", params={"limit": 51}), 422)["field"] == "query.limit"
    assert client.get("/v1/models", params={"limit": 50}).status_code == 200


def _request_schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema a request carries (parameters and bodies, through ``$ref``), by path."""
    components = document["components"]["schemas"]
    seen: set[str] = set()

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    yield from walk(components[name], name)
                return
            yield where, node
            for key, value in node.items():
                yield from walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}[{i}]")

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                yield from walk(parameter["schema"], f"{label} {parameter['name']}")
            yield from walk(operation.get("requestBody", {}), f"{label} body")


def test_every_integer_a_request_carries_is_bounded(client: TestClient) -> None:
    """Past int64 a value reaches the database driver (or torch) and fails there, as a 500;
    the bound is 2**53 - 1 so that the document states it exactly."""
    document = client.get("/openapi.json").json()
    unbounded = [
        where
        for where, schema in _request_schemas(document)
        if schema.get("type") == "integer"
        and not schema.get("maximum", JSON_INT_MAX + 1) <= JSON_INT_MAX
    ]
    assert unbounded == []


def test_every_status_a_route_answers_is_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            label = f"{method.upper()} {path}"
            if path.startswith("/v1"):
                assert {"401", "403", "422", "503"} <= set(responses), label
                assert "Retry-After" in responses["503"]["description"], label
            if "{" in path:
                assert "404" in responses, label
            if "application/json" in (operation.get("requestBody") or {}).get("content", {}):
                assert "415" in responses, label
                assert responses["415"]["content"] == responses["422"]["content"], label


def test_405_names_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("OPTIONS", "/v1/models")
    error = _error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"
    response = client.put("/v1/datasets/abc")
    _error(response, 405)
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}


def test_invalid_json_is_a_422_naming_the_body(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    error = _error(client.post("/v1/models", content=b'{"name": ', headers=headers), 422)
    assert error["field"] == "body" and "invalid JSON at character" in error["message"]
    error = _error(client.post("/v1/models", content=b"\xff\xfe{", headers=headers), 422)
    assert error["field"] == "body" and "could not be parsed" in error["message"]


def test_a_json_route_answers_another_content_type_with_415(client: TestClient) -> None:
    body = b'{"name": "m", "source": "builtin:tiny-llama"}'
    for headers in ({"content-type": "text/plain"}, {}):
        error = _error(client.post("/v1/models", content=body, headers=headers), 415)
        assert error["code"] == "unsupported_media_type"
        assert error["field"] == "header.content-type"
    json_headers = {"content-type": "application/json"}
    assert client.post("/v1/models", content=body, headers=json_headers).status_code == 201


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (
            "/v1/reward-specs",
            {"name": "r", "spec": {"kind": "numeric", "rel_tol": False}},
            "rel_tol",
        ),
        ("/v1/models", {"name": 3, "source": "builtin:tiny-llama"}, "body.name"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(
    client: TestClient, route: str, body: dict[str, Any], field: str
) -> None:
    error = _error(client.post(route, json=body), 422)
    assert error["field"] is not None and error["field"].endswith(field)


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("POST", "/v1/keys", '{"name": "a\\u0000b"}', "body.name"),
        (
            "POST",
            "/v1/valuations",
            '{"model_id": "\\ud800", "pool_dataset_id": "p"}',
            "body.model_id",
        ),
        ("POST", "/v1/curations", '{"pick": {"\\u0000": 1}}', "body.pick.\\u0000"),
        ("GET", "/v1/datasets/a%00b", None, "path.dataset_id"),
        ("GET", "/v1/score-sets/compare?a=%00", None, "query.a"),
    ],
)
def test_text_no_database_stores_is_a_422_naming_where(
    client: TestClient, method: str, url: str, body: str | None, field: str
) -> None:
    """Postgres refuses NUL (and no database a lone surrogate): once a 500 from the driver."""
    headers = {"content-type": "application/json"}
    response = client.request(method, url, content=body, headers=headers if body else {})
    error = _error(response, 422)
    assert error["field"] == field
    assert "NUL" in error["message"] or "surrogate" in error["message"]


def test_a_home_of_an_unknown_user_is_a_422(client: TestClient) -> None:
    body = {"name": "m", "source": "~no-such-user-here/model"}
    assert _error(client.post("/v1/models", json=body), 422)["field"] == "source"
    spec = {"kind": "reward_model", "model_path": "~no-such-user-here/rm"}
    error = _error(client.post("/v1/reward-specs", json={"name": "r", "spec": spec}), 422)
    assert error["field"] == "spec.model_path"


def test_a_top_k_past_the_pool_selects_it_all(
    client: TestClient, db: Session, make_valuation: Callable[..., dict[str, Any]]
) -> None:
    valuation = make_valuation()
    finish_valuation(db, valuation["id"], [(f"pool{i}", 1.0 - i / 5) for i in range(5)])
    for k in (5, 2.0**70):
        response = client.post(
            f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": k}
        )
        assert response.status_code == 201, response.text
        assert response.json()["n_selected"] == 5


# --- SQLite: one writer at a time -------------------------------------------------------------


@pytest.fixture()
def sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated SQLite file that the app reaches through its real ``get_db``."""
    url = f"sqlite:///{tmp_path / 'sift.db'}"
    monkeypatch.setenv("SIFT_ENV", "development")
    monkeypatch.setenv("SIFT_DATABASE_URL", url)
    monkeypatch.setenv("SIFT_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    monkeypatch.setenv("SIFT_BROKER_URL", "memory://")
    monkeypatch.setattr(session_module, "SQLITE_BUSY_TIMEOUT_S", 0.3)
    get_settings.cache_clear()
    session_module._engine_for.cache_clear()
    try:
        upgrade_head(url)
        yield url
    finally:
        session_module.get_engine().dispose()
        session_module._engine_for.cache_clear()
        get_settings.cache_clear()


def _table(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS counter (n INTEGER)"))
        conn.execute(text("DELETE FROM counter"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))


def _read_then_write(engine: Engine, commits_between: Callable[[], None]) -> None:
    with Session(engine) as session:
        n = session.scalar(text("SELECT n FROM counter"))
        commits_between()
        session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
        session.commit()


def test_reading_then_writing_fails_at_once_unless_it_begins_immediate(sqlite_file: str) -> None:
    engine = make_engine(sqlite_file, connect_args={"timeout": 10})
    _table(engine)

    def another_writer_commits() -> None:
        with engine.begin() as conn:
            conn.execute(text("UPDATE counter SET n = n + 10"))

    # What every read-then-write request hit: its snapshot is stale, no busy wait can help.
    with pytest.raises(OperationalError, match="database is locked"):
        _read_then_write(engine, another_writer_commits)

    # IMMEDIATE: the second writer waits for the first, then reads what it committed.
    holder = for_writes(engine).connect()
    holder.execute(text("UPDATE counter SET n = 100"))  # holds the write lock
    errors: list[BaseException] = []

    def second() -> None:
        try:
            _read_then_write(for_writes(engine), lambda: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.1)
    holder.commit()
    holder.close()
    thread.join(5)
    assert errors == []
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT n FROM counter")) == 101
    engine.dispose()


def test_a_write_that_cannot_get_the_lock_is_a_503_and_reads_go_on(sqlite_file: str) -> None:
    app = create_app()
    app.dependency_overrides[get_queue] = lambda: RecordingQueue()
    with session_scope() as session:
        tenant = keys.get_or_create_tenant(session, "t")
        _, key = keys.create_key(session, tenant.id, name="test", role="member")
    database = sqlite_file.removeprefix("sqlite:///")
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the timeout
    try:
        with TestClient(app, headers={"authorization": f"Bearer {key}"}) as client:
            body = {"name": "m", "source": "builtin:tiny-llama"}
            response = client.post("/v1/models", json=body)
            error = _error(response, 503)
            assert error["code"] == "unavailable"
            assert response.headers["retry-after"] == "1"
            assert client.get("/v1/models").status_code == 200  # WAL: readers never wait
            holder.execute("ROLLBACK")
            assert client.post("/v1/models", json=body).status_code == 201
    finally:
        holder.close()
    with session_scope() as session:
        assert len(session.scalars(select(Model)).all()) == 1


def test_a_database_that_is_not_migrated_is_a_500_not_a_503(sqlite_file: str) -> None:
    """SQLite reports ``no such table`` as an operational error too: that is our bug."""
    app = create_app()
    with session_scope() as session:
        tenant = keys.get_or_create_tenant(session, "t")
        _, key = keys.create_key(session, tenant.id, name="test", role="member")
        session.execute(text("DROP TABLE reward_specs"))
    with TestClient(app, headers={"authorization": f"Bearer {key}"}) as client:
        with pytest.raises(OperationalError, match="no such table"):
            client.get("/v1/reward-specs")
