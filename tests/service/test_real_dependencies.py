"""The app with its real dependencies (settings, engine, ``get_db``, blob store) on the embedded
default's SQLite; only the queue is replaced. Exercises what the rolled-back fixtures cannot:
real commits, ``session_scope`` as the workers use it, and streaming after the request's
session dependency has finished."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.auth import keys
from service.config import get_settings
from service.db.base import utcnow
from service.db.migrate import upgrade_head
from service.db.models import Job, Score, Valuation
from service.db.session import SessionLocal, session_scope
from service.main import create_app
from service.queue import get_queue
from tests.service.conftest import RecordingQueue


@pytest.fixture()
def real_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("SIFT_ENV", "development")
    monkeypatch.setenv("SIFT_DATABASE_URL", f"sqlite:///{tmp_path}/state/sift.db")
    monkeypatch.setenv("SIFT_BLOB_URL", f"file://{tmp_path}/blobs")
    monkeypatch.setenv("SIFT_BROKER_URL", "memory://")
    get_settings.cache_clear()
    try:
        upgrade_head()
        app = create_app()
        app.dependency_overrides[get_queue] = lambda: RecordingQueue()
        with session_scope() as session:
            tenant = keys.get_or_create_tenant(session, "t")
            _, key = keys.create_key(session, tenant.id, name="test", role="member")
        with TestClient(app, headers={"authorization": f"Bearer {key}"}) as client:
            yield client
    finally:
        get_settings.cache_clear()


def test_end_to_end_on_real_sessions(real_client: TestClient) -> None:
    client = real_client
    assert client.get("/readyz").json()["status"] == "ok"
    pool_records = [{"id": f"p{i}", "prompt": f"q{i}", "response": f"a{i}"} for i in range(6)]
    pool = client.post("/v1/datasets", json={"name": "pool", "records": pool_records}).json()
    probe = client.post("/v1/datasets", json={"name": "probe", "records": pool_records[:1]}).json()
    model = client.post("/v1/models", json={"name": "t", "source": "builtin:tiny-llama"}).json()
    valuation = client.post(
        "/v1/valuations",
        json={
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probe["id"],
        },
    ).json()

    # What a worker does, outside any request.
    with session_scope() as session:
        row = session.get(Valuation, valuation["id"])
        assert row is not None
        job = session.get(Job, row.job_id)
        assert job is not None
        job.status, job.finished_at = "succeeded", utcnow()
        for rank, i in enumerate([4, 1, 5, 0, 2, 3]):
            session.add(
                Score(
                    tenant_id=row.tenant_id,
                    valuation_id=row.id,
                    record_id=f"p{i}",
                    rank=rank,
                    score=-rank,
                )
            )
        row.n_scored = 6
    with SessionLocal() as session:  # the bare factory, as the lead's JobTracker uses it
        assert len(session.scalars(select(Score)).all()) == 6

    assert client.get(f"/v1/valuations/{valuation['id']}").json()["status"] == "succeeded"
    selection = client.post(
        f"/v1/valuations/{valuation['id']}/selections",
        json={"rule": "top_fraction", "value": 0.5},
    ).json()
    assert selection["record_ids"] == ["p4", "p1", "p5"]
    export = client.get(f"/v1/selections/{selection['id']}/export")
    assert [json.loads(line) for line in export.text.splitlines()] == [
        pool_records[4],
        pool_records[1],
        pool_records[5],
    ]
    assert client.delete(f"/v1/datasets/{pool['id']}").status_code == 409
    other = client.post("/v1/datasets", json={"name": "o", "records": pool_records}).json()
    assert client.delete(f"/v1/datasets/{other['id']}").status_code == 204
    assert client.get("/v1/datasets").json()["total"] == 2
