"""Client-supplied secrets are write-only: judge headers and tenant secrets are sealed at rest,
never returned, and opened only by the worker; a request cannot name a worker variable."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
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


OPENAI = "https://api.openai.com/v1"


def test_tenant_secrets_are_write_only(make_client: Callable[..., TestClient], db: Session) -> None:
    a = make_client("team-a")
    body = {"name": "openai", "value": "sk-live-abcdef", "hosts": ["API.openai.com"]}
    created = a.post("/v1/secrets", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "openai" and "sk-live" not in created.text
    assert created.json()["hosts"] == ["api.openai.com"]
    listed = a.get("/v1/secrets")
    assert [s["name"] for s in listed.json()] == ["openai"] and "sk-live" not in listed.text
    assert a.post("/v1/secrets", json={**body, "value": "x"}).status_code == 409
    for field, bad_body in (
        ("body.name", {**body, "name": "../etc"}),
        ("body.hosts", {**body, "name": "h", "hosts": []}),
        ("body.hosts", {**body, "name": "h", "hosts": ["http://x/"]}),
        ("body.value", {**body, "name": "h", "value": "caf\u00e9 key"}),
    ):
        bad = a.post("/v1/secrets", json=bad_body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
        assert "caf" not in bad.text  # a refused value is not echoed either
    row = db.scalar(select(TenantSecret).where(TenantSecret.name == "openai"))
    assert row is not None and row.ciphertext and "sk-live" not in row.ciphertext
    # as the worker reads it: only for a URL on one of its hosts
    assert tenant_secrets.reveal(db, "openai", OPENAI) == "sk-live-abcdef"
    with pytest.raises(tenant_secrets.SecretMissing, match="may not be sent"):
        tenant_secrets.reveal(db, "openai", "https://attacker.example.com/v1")
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
    tenant_secrets.grant_env(
        db, tenant.id, "shared-openai", "SIFT_TEST_OPERATOR_KEY", ["api.openai.com"]
    )
    db.commit()
    listed = a.get("/v1/secrets").json()
    assert listed[0]["name"] == "shared-openai" and listed[0]["source"] == "worker_env"
    assert "granted-value" not in json.dumps(listed)
    db.info["tenant_id"] = tenant.id
    assert tenant_secrets.reveal(db, "shared-openai", OPENAI) == "granted-value"
    monkeypatch.delenv("SIFT_TEST_OPERATOR_KEY")
    try:
        tenant_secrets.reveal(db, "shared-openai", OPENAI)
    except tenant_secrets.SecretMissing as e:
        assert "does not have" in str(e)
    else:
        raise AssertionError("an unset granted variable must not reveal anything")


def test_only_admins_manage_secrets_and_a_secret_goes_only_to_its_hosts(
    make_client: Callable[..., TestClient], make_dataset: Callable[..., Any], model: Any
) -> None:
    """A member cannot point an assist endpoint at its own server with the tenant's key."""
    admin, member = make_client("team-a"), make_client("team-a", "member")
    body = {"name": "openai", "value": "sk-live-abcdef", "hosts": ["api.openai.com"]}
    assert member.post("/v1/secrets", json=body).status_code == 403
    assert admin.post("/v1/secrets", json=body).status_code == 201
    assert member.delete("/v1/secrets/openai").status_code == 403
    assert member.get("/v1/secrets").status_code == 200
    spec = admin.post("/v1/reward-specs", json={"name": "em", "spec": {"kind": "exact_match"}})
    pool, probes = make_dataset(3, name="pool"), make_dataset(2, name="probes")
    valuation = {
        "model_id": model["id"],
        "pool_dataset_id": pool["id"],
        "probe_dataset_id": probes["id"],
        "method": "nice",
        "reward_spec_id": spec.json()["id"],
    }

    def with_endpoint(base_url: str) -> Any:
        endpoint = {"base_url": base_url, "model": "m", "api_key_secret": "openai"}
        settings = {"nice": {"assist_endpoint": endpoint}}
        return member.post("/v1/valuations", json={**valuation, "settings": settings})

    refused = with_endpoint("https://attacker.example.com/v1")
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["field"] == "body.settings.nice.assist_endpoint.api_key_secret"
    assert "may only be sent to api.openai.com" in refused.json()["error"]["message"]
    assert with_endpoint(OPENAI).status_code == 202


def test_judge_header_values_must_be_printable_ascii_and_are_not_echoed(
    client: TestClient,
) -> None:
    spec = {**JUDGE, "headers": {"Authorization": "Bearer s\u00e9cret-token"}}
    response = client.post("/v1/reward-specs", json={"name": "j", "spec": spec})
    assert response.status_code == 422 and "cret-token" not in response.text
    spec = {**JUDGE, "headers": {"Bad Name": "x"}}
    assert client.post("/v1/reward-specs", json={"name": "j", "spec": spec}).status_code == 422
