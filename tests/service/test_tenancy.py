"""Tenancy and API keys through the app: the route walk, roles, key life cycle, the OpenAPI
security scheme, per-tenant names and blobs (TestClient on the test database; CI: Postgres)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiKey, Job, JobStatus, ScoreSet
from tests import tenancy_walk
from tests.service.conftest import api_key, finish_valuation
from tests.service.test_warmup_runs import adapter, upload


def tenant_a_resources(a: TestClient, db: Session, names: dict[str, str]) -> dict[str, str]:
    """One of every resource, owned by the tenant of client ``a``; their ids by kind."""
    rows = [
        {"id": f"r{i}", "prompt": f"q{i}?", "response": f"a{i}", "metadata": {"pair": str(i)}}
        for i in range(4)
    ]
    ds = a.post("/v1/datasets", json={"name": names["dataset"], "records": rows}).json()
    model = a.post("/v1/models", json={"name": names["model"], "source": "builtin:tiny-llama"})
    spec = a.post(
        "/v1/reward-specs",
        json={
            "name": names["reward_spec"],
            "spec": {
                "kind": "http_judge",
                "url": "https://judge.example/score",
                "headers": {"Authorization": "Bearer a-judge-token"},
            },
        },
    )
    secret = a.post(
        "/v1/secrets",
        json={"name": names["secret"], "value": "a-secret-value", "hosts": ["a.example.com"]},
    )
    assert secret.status_code == 201 and spec.status_code == 201, (secret.text, spec.text)
    model_id = model.json()["id"]
    valuation = a.post(
        "/v1/valuations",
        json={"model_id": model_id, "pool_dataset_id": ds["id"], "probe_dataset_id": ds["id"]},
    ).json()
    finish_valuation(db, valuation["id"], scores=[(f"r{i}", 1.0 - i) for i in range(4)])
    selection = a.post(
        f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": 2}
    ).json()
    run = upload(a, model_id, [adapter(0)]).json()
    study = a.post(
        "/v1/studies",
        json={
            "warmup_run_id": run["id"],
            "eval_dataset_id": ds["id"],
            "probe_sets": [{"name": "p", "dataset_id": ds["id"]}],
        },
    ).json()
    score_set = a.post("/v1/score-sets", json={"scorer": "text", "dataset_id": ds["id"]}).json()
    row = db.get(ScoreSet, score_set["id"])
    assert row is not None
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    db.commit()
    curation = a.post(
        "/v1/curations",
        json={
            "dataset_id": ds["id"],
            "pick": {"method": "random"},
            "budget": 1,
        },
    ).json()
    evaluation = a.post(
        "/v1/evaluations",
        json={
            "model_id": model_id,
            "pool_dataset_id": ds["id"],
            "target_dataset_id": ds["id"],
            "budget": 2,
            "arms": [{"kind": "selection", "selection_id": selection["id"]}, {"kind": "full"}],
        },
    ).json()
    key_id = a.get("/v1/me").json()["key_id"]
    ids = {
        "dataset": ds["id"],
        "model": model_id,
        "reward_spec": spec.json()["id"],
        "valuation": valuation["id"],
        "selection": selection["id"],
        "warmup_run": run["id"],
        "study": study["id"],
        "score_set": score_set["id"],
        "curation": curation["id"],
        "evaluation": evaluation["id"],
        "webhook": a.post(
            "/v1/webhooks", json={"url": "https://a.example.com/h", "event_types": ["job.failed"]}
        ).json()["id"],
        "key": key_id,
        "secret": names["secret"],
    }
    assert all(ids.values()), ids
    return ids


NAMES = {
    "dataset": "pool-a",
    "model": "model-a",
    "reward_spec": "judge-a",
    "secret": "secret-a",
    "key": "key-a",
}


@pytest.fixture()
def tenant_a(make_client: Callable[..., TestClient], db: Session) -> tuple[TestClient, Any]:
    a = make_client("team-a")
    return a, tenant_a_resources(a, db, NAMES)


def _caller(client: TestClient) -> tenancy_walk.Call:
    return lambda method, url, **kw: client.request(method, url, **kw)


def test_another_tenant_sees_nothing_on_any_route(
    app: FastAPI,
    make_client: Callable[..., TestClient],
    tenant_a: tuple[TestClient, Any],
    blob_store: Any,
) -> None:
    a, ids = tenant_a
    b = make_client("team-b")
    blobs_before = blob_store.list_keys("")
    problems = tenancy_walk.walk(app.openapi(), _caller(b), ids, NAMES, adapter(1))
    assert not problems, tenancy_walk.dumps(problems)
    # and tenant A still has all of it: B's DELETEs of A's ids touched nothing
    for path in (
        f"/v1/datasets/{ids['dataset']}",
        f"/v1/models/{ids['model']}",
        f"/v1/reward-specs/{ids['reward_spec']}",
        f"/v1/valuations/{ids['valuation']}",
        f"/v1/selections/{ids['selection']}",
        f"/v1/warmup-runs/{ids['warmup_run']}",
        f"/v1/studies/{ids['study']}",
        f"/v1/score-sets/{ids['score_set']}",
        f"/v1/curations/{ids['curation']}",
    ):
        assert a.get(path).status_code == 200, path
    assert set(blobs_before) <= set(blob_store.list_keys(""))
    assert a.get(f"/v1/datasets/{ids['dataset']}").status_code == 200
    assert a.get(f"/v1/valuations/{ids['valuation']}/scores").json()["total"] == 4
    assert [s["name"] for s in a.get("/v1/secrets").json()] == [NAMES["secret"]]
    assert a.get("/v1/me").status_code == 200  # B's DELETE of A's key did nothing


def test_every_route_needs_a_key(
    app: FastAPI, anonymous: TestClient, tenant_a: tuple[TestClient, Any]
) -> None:
    _, ids = tenant_a
    openapi = app.openapi()
    problems = tenancy_walk.unauthenticated(openapi, _caller(anonymous), ids)
    assert not problems, tenancy_walk.dumps(problems)
    anonymous.headers["authorization"] = "Bearer sift_not-a-real-key"
    problems = tenancy_walk.unauthenticated(openapi, _caller(anonymous), ids)
    assert not problems, tenancy_walk.dumps(problems)
    anonymous.headers["authorization"] = "Basic dXNlcjpwYXNz"
    assert anonymous.get("/v1/datasets").status_code == 401
    assert anonymous.get("/healthz").status_code == 200  # liveness needs no key


def test_roles(make_client: Callable[..., TestClient]) -> None:
    reader, member = make_client("team-a", "read_only"), make_client("team-a", "member")
    body = {"name": "d", "records": [{"prompt": "q", "response": "a"}]}
    refused = reader.post("/v1/datasets", json=body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    created = member.post("/v1/datasets", json=body)
    assert created.status_code == 201
    assert reader.get(f"/v1/datasets/{created.json()['id']}").status_code == 200
    assert reader.delete(f"/v1/datasets/{created.json()['id']}").status_code == 403
    for client in (reader, member):
        assert client.get("/v1/keys").status_code == 403
        assert client.post("/v1/keys", json={"name": "x"}).status_code == 403


def test_key_life_cycle(client: TestClient, anonymous: TestClient, db: Session) -> None:
    created = client.post("/v1/keys", json={"name": "ci", "role": "member"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("sift_") and len(key) >= 40 and body["prefix"] == key[:12]
    # stored hashed: no column of the row holds the key
    row = db.scalar(select(ApiKey).where(ApiKey.id == body["id"]))
    assert row is not None and key not in repr(vars(row)) and row.secret_hash != key
    listed = client.get("/v1/keys").json()
    assert body["id"] in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert client.get(f"/v1/keys/{body['id']}").status_code in (404, 405)
    anonymous.headers["authorization"] = f"Bearer {key}"
    assert anonymous.get("/v1/me").json() == {
        "tenant_id": row.tenant_id,
        "tenant_name": "team-a",
        "key_id": body["id"],
        "role": "member",
    }
    assert client.delete(f"/v1/keys/{body['id']}").status_code == 204
    revoked = anonymous.get("/v1/datasets")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert client.delete(f"/v1/keys/{body['id']}").status_code == 409
    bad = client.post("/v1/keys", json={"name": "x", "role": "root"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.role"


def test_openapi_declares_the_bearer_scheme_on_every_v1_operation(app: FastAPI) -> None:
    openapi = app.openapi()
    assert openapi["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": openapi["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert operation.get("security") == [{"ApiKey": []}], (method, path)
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            else:
                assert "security" not in operation, (method, path)


def test_names_are_per_tenant_and_blobs_are_apart(
    make_client: Callable[..., TestClient], blob_store: Any
) -> None:
    a, b = make_client("team-a"), make_client("team-b")
    for client in (a, b):
        response = client.post("/v1/models", json={"name": "same", "source": "builtin:tiny-llama"})
        assert response.status_code == 201, response.text
    assert (
        a.post("/v1/models", json={"name": "same", "source": "builtin:tiny-llama"}).status_code
        == 409
    )
    runs = [upload(c, c.get("/v1/models").json()["items"][0]["id"], [adapter(0)]) for c in (a, b)]
    assert all(r.status_code == 201 for r in runs), [r.text for r in runs]
    tenants = {a.get("/v1/me").json()["tenant_id"], b.get("/v1/me").json()["tenant_id"]}
    keys = blob_store.list_keys("")
    assert {k.split("/")[1] for k in keys} == tenants, keys
    assert all(k.startswith("tenants/") for k in keys)


def test_the_walk_fails_when_isolation_is_missing(
    app: FastAPI, db: Session, tenant_a: tuple[TestClient, Any]
) -> None:
    """Without the tenant filter the walk must find leaks (so it can fail)."""
    from sqlalchemy import event

    from service import tenancy

    _, ids = tenant_a
    b = TestClient(app, raise_server_exceptions=False)  # writes still hit CrossTenant: 500s
    b.headers["authorization"] = f"Bearer {api_key(db, 'team-b')}"
    event.remove(Session, "do_orm_execute", tenancy._filter_by_tenant)
    try:
        problems = tenancy_walk.walk(app.openapi(), _caller(b), ids, NAMES, adapter(1))
    finally:
        event.listen(Session, "do_orm_execute", tenancy._filter_by_tenant)
    assert any("GET /v1/datasets/{dataset_id}" in p for p in problems), problems
    assert any("GET /v1/valuations as tenant B" in p for p in problems), problems


def test_the_default_tenants_blobs_at_the_root_cannot_reach_other_tenants(
    blob_store: Any,
) -> None:
    from service.blobs import TenantBlobStore
    from service.tenancy import DEFAULT_TENANT_ID

    TenantBlobStore(blob_store, "t2").put_bytes("features/x/shard.safetensors", b"b's")
    default = TenantBlobStore(blob_store, DEFAULT_TENANT_ID)
    default.put_bytes("features/y/shard.safetensors", b"old layout")
    assert default.list_keys("") == ["features/y/shard.safetensors"]
    for call in (
        lambda: default.get_bytes("tenants/t2/features/x/shard.safetensors"),
        lambda: default.list_keys("tenants/"),
        lambda: default.delete_prefix("tenants"),
    ):
        with pytest.raises(ValueError, match="another tenant"):
            call()
