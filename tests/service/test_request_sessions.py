"""The request's session and the caller's key on the real ``get_db`` and engine (SQLite, or
Postgres where ``SIFT_TEST_DATABASE_URL`` points): what the rolled-back ``db`` fixture hides.

- a request hands its connection back to the pool whatever its outcome;
- a read runs in autocommit on Postgres (no BEGIN / ROLLBACK round trips);
- a verified key is read from the database once per ``SIFT_API_KEY_CACHE_S``, a revocation
  through the API applies at once, one made elsewhere (the CLI) when the entry expires, and
  an unknown key is never remembered.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, event
from sqlalchemy.orm import Session

from service.auth import keys
from service.config import get_settings
from service.db.models import ApiKey, Dataset, Model, Record, Tenant
from service.db.session import for_reads, get_engine
from service.main import create_app
from service.queue import get_queue
from service.tenancy import tenant_scope
from tests.service.conftest import RecordingQueue


@dataclass
class Real:
    client: TestClient
    engine: Engine
    tenant_id: str
    key: str
    key_id: str

    def new_key(self, role: str = "member") -> tuple[str, str]:
        with Session(self.engine) as session:
            row, key = keys.create_key(session, self.tenant_id, name="extra", role=role)
            session.commit()
            return key, row.id


@pytest.fixture()
def real(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Real]:
    monkeypatch.setenv("SIFT_ENV", "development")
    monkeypatch.setenv("SIFT_DATABASE_URL", database_url)
    monkeypatch.setenv("SIFT_BLOB_URL", f"file://{tmp_path}/blobs")
    monkeypatch.setenv("SIFT_BROKER_URL", "memory://")
    get_settings.cache_clear()
    engine = get_engine()
    with Session(engine) as session:  # committed for real: removed again below
        tenant = keys.get_or_create_tenant(session, f"sessions-{uuid.uuid4().hex[:8]}")
        row, key = keys.create_key(session, tenant.id, name="test", role="admin")
        session.commit()
        tenant_id, key_id = tenant.id, row.id
    app = create_app()
    app.dependency_overrides[get_queue] = lambda: RecordingQueue()
    try:
        with TestClient(app, headers={"authorization": f"Bearer {key}"}) as client:
            yield Real(client, engine, tenant_id, key, key_id)
    finally:
        with tenant_scope(tenant_id), Session(engine) as session:
            session.execute(delete(Record).where(Record.tenant_id == tenant_id))
            session.execute(delete(Dataset).where(Dataset.tenant_id == tenant_id))
            session.execute(delete(Model).where(Model.tenant_id == tenant_id))
            session.commit()
        with Session(engine) as session:
            session.execute(delete(ApiKey).where(ApiKey.tenant_id == tenant_id))
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))
            session.commit()
        get_settings.cache_clear()


@pytest.fixture()
def key_reads(real: Real) -> Iterator[list[str]]:
    """Statements that read the api_keys table, as the engine sends them."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM api_keys" in statement:
            seen.append(statement)

    event.listen(real.engine, "before_cursor_execute", record)
    yield seen
    event.remove(real.engine, "before_cursor_execute", record)


def test_every_request_hands_its_connection_back(real: Real) -> None:
    pool = real.engine.pool
    ok = real.client.post(
        "/v1/datasets",
        json={"name": "d", "records": [{"id": "a", "prompt": "p", "response": "r"}]},
    )
    assert ok.status_code == 201
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    dataset_id = ok.json()["id"]
    for path, status in (
        (f"/v1/datasets/{dataset_id}", 200),
        ("/v1/datasets/nope", 404),  # the endpoint raised
        ("/v1/datasets?limit=0", 422),  # refused before the endpoint
    ):
        assert real.client.get(path).status_code == status
        assert pool.checkedout() == 0, path  # type: ignore[attr-defined]
    model = real.client.post("/v1/models", json={"name": "m", "source": "builtin:tiny-llama"})
    assert model.status_code == 201
    refused = real.client.post(
        "/v1/valuations",
        json={
            "model_id": model.json()["id"],
            "pool_dataset_id": dataset_id,
            "probe_dataset_id": "nope",
        },
    )
    # a write refused mid-transaction (after reading the model and the pool): rolled back
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "body.probe_dataset_id"
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_read_request_runs_in_autocommit_on_postgres(real: Real) -> None:
    if real.engine.dialect.name == "sqlite":
        pytest.skip("SQLite reads keep their deferred transaction (test below)")
    reads: list[bool] = []
    writes: list[bool] = []

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        autocommit = conn.connection.dbapi_connection.autocommit
        if "FROM datasets" in statement:
            reads.append(autocommit)
        elif statement.startswith("INSERT INTO datasets"):
            writes.append(autocommit)

    event.listen(real.engine, "before_cursor_execute", record)
    try:
        assert real.client.get("/v1/datasets").status_code == 200
        body = {"name": "w", "records": [{"id": "a", "prompt": "p", "response": "r"}]}
        assert real.client.post("/v1/datasets", json=body).status_code == 201
    finally:
        event.remove(real.engine, "before_cursor_execute", record)
    assert reads and all(reads)  # the GET's count and page: no transaction
    assert writes == [False]  # the POST: in its transaction, on the same pool's connections


def test_reads_run_in_autocommit_on_postgres(real: Real) -> None:
    reads = for_reads(real.engine)
    if real.engine.dialect.name == "sqlite":
        assert reads is real.engine  # a deferred transaction: SQLite's WAL snapshot
        return
    with reads.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        assert conn.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
    with real.engine.connect() as conn:  # the pool's connection is itself again
        conn.exec_driver_sql("SELECT 1")
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]


def test_a_verified_key_is_read_from_the_database_once(real: Real, key_reads: list[str]) -> None:
    app = real.client.app
    app.state.key_cache = keys.KeyCache(5.0, timer=lambda: 0.0)  # type: ignore[attr-defined]
    for _ in range(5):
        assert real.client.get("/v1/me").status_code == 200
    assert len(key_reads) == 1


def test_an_unknown_key_is_never_remembered(real: Real, key_reads: list[str]) -> None:
    made_up = keys.KEY_PREFIX + "not-yet-a-key-" + uuid.uuid4().hex
    caller = {"authorization": f"Bearer {made_up}"}
    for _ in range(3):
        assert real.client.get("/v1/me", headers=caller).status_code == 401
    assert len(key_reads) == 3
    with Session(real.engine) as session:  # the same key now exists
        row, _ = keys.create_key(session, real.tenant_id, name="late", role="member")
        row.secret_hash = keys.hash_key(made_up)
        session.commit()
    assert real.client.get("/v1/me", headers=caller).status_code == 200


def test_revoking_through_the_api_applies_at_once(real: Real) -> None:
    key, key_id = real.new_key()
    other = {"authorization": f"Bearer {key}"}
    assert real.client.get("/v1/me", headers=other).status_code == 200  # now cached
    assert real.client.delete(f"/v1/keys/{key_id}").status_code == 204
    refused = real.client.get("/v1/me", headers=other)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_a_key_revoked_elsewhere_is_refused_when_its_entry_expires(real: Real) -> None:
    now = [1000.0]
    app = real.client.app
    app.state.key_cache = keys.KeyCache(5.0, timer=lambda: now[0])  # type: ignore[attr-defined]
    key, key_id = real.new_key()
    other = {"authorization": f"Bearer {key}"}
    assert real.client.get("/v1/me", headers=other).status_code == 200
    with Session(real.engine) as session:  # what `sift keys revoke` does
        keys.revoke_key(session, key_id)
        session.commit()
    now[0] += 4.0
    assert real.client.get("/v1/me", headers=other).status_code == 200  # within the TTL
    now[0] += 1.5
    assert real.client.get("/v1/me", headers=other).status_code == 401


def test_a_zero_ttl_reads_the_key_on_every_request(real: Real, key_reads: list[str]) -> None:
    real.client.app.state.key_cache = keys.KeyCache(0)  # type: ignore[attr-defined]
    for _ in range(3):
        assert real.client.get("/v1/me").status_code == 200
    assert len(key_reads) == 3


def test_a_cached_read_only_key_still_may_not_write(real: Real) -> None:
    key, _ = real.new_key(role="read_only")
    reader = {"authorization": f"Bearer {key}"}
    assert real.client.get("/v1/datasets", headers=reader).status_code == 200  # cached now
    body = {"name": "x", "records": [{"id": "a", "prompt": "p", "response": "r"}]}
    assert real.client.post("/v1/datasets", json=body, headers=reader).status_code == 403


def test_a_lookup_that_races_a_revocation_caches_nothing(
    real: Real, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is read live, then revoked through this process before the lookup returns:
    what the lookup read must not be cached, or the revoked key would act for the TTL."""
    from service.auth import dependencies

    key, key_id = real.new_key()
    look_up = dependencies._look_up

    def read_then_revoked(session: Session, raw: str) -> Any:
        principal = look_up(session, raw)
        with Session(real.engine) as other:  # what DELETE /v1/keys/{id} does meanwhile
            keys.revoke_key(other, key_id)
            other.commit()
        dependencies.key_cache(real.client.app).forget(key_id)  # type: ignore[arg-type]
        return principal

    monkeypatch.setattr(dependencies, "_look_up", read_then_revoked)
    other = {"authorization": f"Bearer {key}"}
    assert real.client.get("/v1/me", headers=other).status_code == 200  # read while live
    monkeypatch.setattr(dependencies, "_look_up", look_up)
    assert real.client.get("/v1/me", headers=other).status_code == 401


def test_a_cancelled_request_still_hands_its_connection_back(real: Real) -> None:
    """Cancellation (a disconnect, a shutdown) during the session's teardown must not leave
    its connection checked out."""
    import anyio
    from sqlalchemy import text
    from starlette.requests import Request

    from service.db.session import get_db

    async def request_cancelled_at_teardown() -> None:
        sessions = get_db(Request({"type": "http", "method": "GET", "headers": []}))
        session = await sessions.__anext__()
        await anyio.to_thread.run_sync(lambda: session.execute(text("SELECT 1")))
        assert real.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sessions.aclose()

    anyio.run(request_cancelled_at_teardown)
    assert real.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
