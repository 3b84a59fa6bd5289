"""Client-supplied secrets are write-only: judge headers and tenant secrets are sealed at rest,
never returned, and opened only by the worker; a request cannot name a worker variable."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import secrets
from service.config import Settings
from service.db.models import RewardSpec, TenantSecret
from service.tenant_secrets import service as tenant_secrets
from workers.tasks.common import reward_spec_to_run

TOKEN = "Bearer judge-token-0123456789"
JUDGE = {
    "kind": "http_judge",
    "url": "https://judge.example.com/score",
    "headers": {"Authorization": TOKEN, "X-Team": "a"},
}


def test_judge_headers_are_sealed_and_never_returned(
    client: TestClient, db: Session, settings: Settings
) -> None:
    created = client.post("/v1/reward-specs", json={"name": "judge", "spec": JUDGE})
    assert created.status_code == 201, created.text
    shown = {"Authorization": "<redacted>", "X-Team": "<redacted>"}
    assert created.json()["spec"]["headers"] == shown
    for response in (
        created,
        client.get(f"/v1/reward-specs/{created.json()['id']}"),
        client.get("/v1/reward-specs"),
    ):
        assert "judge-token" not in response.text
    row = db.scalar(select(RewardSpec).where(RewardSpec.id == created.json()["id"]))
    assert row is not None and "judge-token" not in json.dumps(row.spec)
    assert row.secret_headers is not None and "judge-token" not in row.secret_headers
    assert json.loads(secrets.unseal(row.secret_headers, settings))["Authorization"] == TOKEN
    # the worker, and only the worker, gets the real headers back
    assert reward_spec_to_run(row)["headers"] == JUDGE["headers"]


def test_specs_stored_before_sealing_are_redacted_too(client: TestClient, db: Session) -> None:
    client.get("/v1/me")  # the session now acts for tenant team-a
    legacy = RewardSpec(name="old", kind="http_judge", spec=JUDGE)  # headers in clear, as before
    db.add(legacy)
    db.commit()
    response = client.get(f"/v1/reward-specs/{legacy.id}")
    assert response.status_code == 200 and "judge-token" not in response.text
    assert reward_spec_to_run(legacy)["headers"] == JUDGE["headers"]  # still sent


def test_tenant_secrets_are_write_only(make_client: Callable[..., TestClient], db: Session) -> None:
    a = make_client("team-a")
    created = a.post("/v1/secrets", json={"name": "openai", "value": "sk-live-abcdef"})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "openai" and "sk-live" not in created.text
    listed = a.get("/v1/secrets")
    assert [s["name"] for s in listed.json()] == ["openai"] and "sk-live" not in listed.text
    assert a.post("/v1/secrets", json={"name": "openai", "value": "x"}).status_code == 409
    bad = a.post("/v1/secrets", json={"name": "../etc", "value": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.name"
    row = db.scalar(select(TenantSecret).where(TenantSecret.name == "openai"))
    assert row is not None and row.ciphertext and "sk-live" not in row.ciphertext
    assert tenant_secrets.reveal(db, "openai") == "sk-live-abcdef"  # as the worker reads it
    assert a.delete("/v1/secrets/openai").status_code == 204
    assert a.get("/v1/secrets").json() == []
    assert a.delete("/v1/secrets/openai").status_code == 404


def test_a_worker_variable_is_reachable_only_when_granted(
    make_client: Callable[..., TestClient], db: Session, monkeypatch: Any
) -> None:
    from service.auth import keys

    monkeypatch.setenv("SIFT_TEST_OPERATOR_KEY", "granted-value")
    a = make_client("team-a")
    tenant = keys.get_or_create_tenant(db, "team-a")
    tenant_secrets.grant_env(db, tenant.id, "shared-openai", "SIFT_TEST_OPERATOR_KEY")
    db.commit()
    listed = a.get("/v1/secrets").json()
    assert listed[0]["name"] == "shared-openai" and listed[0]["source"] == "worker_env"
    assert "granted-value" not in json.dumps(listed)
    db.info["tenant_id"] = tenant.id
    assert tenant_secrets.reveal(db, "shared-openai") == "granted-value"
    monkeypatch.delenv("SIFT_TEST_OPERATOR_KEY")
    try:
        tenant_secrets.reveal(db, "shared-openai")
    except tenant_secrets.SecretMissing as e:
        assert "does not have" in str(e)
    else:
        raise AssertionError("an unset granted variable must not reveal anything")
