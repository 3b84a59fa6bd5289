"""Webhook routes: endpoints (secret once, outbound guard at registration), the callback
signing secret, callback_url on every job-creating request, the outbox rows a job's status
change writes in its own transaction, the delivery log, and tenancy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import (
    JobCallback,
    ScoreSet,
    Valuation,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from service.secrets import unseal
from service.webhooks import outbox
from tests.service.conftest import finish_valuation

HOOK = "https://hooks.example.com/sift"


@pytest.fixture(autouse=True)
def dispatched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The delivery ids the outbox would send after each commit (no broker here)."""
    sent: list[str] = []
    monkeypatch.setattr(outbox, "dispatch", sent.append)
    yield sent


def _webhook(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks", json={"url": HOOK, "event_types": ["job.succeeded"]} | body
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create_returns_the_secret_once_and_stores_it_sealed(
    client: TestClient, db: Session
) -> None:
    created = _webhook(client, event_types=["job.failed", "job.succeeded", "job.failed"])
    assert created["secret"].startswith("whsec_") and created["url"] == HOOK
    assert created["event_types"] == ["job.failed", "job.succeeded"]
    row = db.get(WebhookEndpoint, created["id"])
    assert row is not None and created["secret"] not in row.secret_ciphertext
    assert unseal(row.secret_ciphertext) == created["secret"]
    read = client.get(f"/v1/webhooks/{created['id']}")
    assert read.status_code == 200 and "secret" not in read.json()
    listed = client.get("/v1/webhooks").json()
    assert [w["id"] for w in listed["items"]] == [created["id"]] and listed["total"] == 1
    assert created["secret"] not in str(listed)
    assert client.delete(f"/v1/webhooks/{created['id']}").status_code == 204
    assert client.get(f"/v1/webhooks/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_types": ["job.succeeded"]}, "body.url"),
        ({"url": "ftp://hooks.example.com/x", "event_types": ["job.succeeded"]}, "body.url"),
        ({"url": HOOK, "event_types": []}, "body.event_types"),
        ({"url": HOOK, "event_types": ["job.exploded"]}, "body.event_types.0"),
        ({"url": HOOK, "event_types": ["job.failed"], "extra": 1}, "body.extra"),
        (
            {"url": HOOK, "event_types": ["job.failed"], "description": "x" * 201},
            "body.description",
        ),
    ],
)
def test_invalid_registrations_name_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http to a public host
        "https://localhost/x",
        "https://10.0.0.7/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/x",
        "https://0x7f000001/x",
        "https://redis/x",
        "https://user:pw@hooks.example.com/x",
    ],
)
def test_the_outbound_guard_refuses_at_registration(client: TestClient, url: str) -> None:
    response = client.post("/v1/webhooks", json={"url": url, "event_types": ["job.failed"]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "body.url" and "outbound policy" in error["message"]


def test_an_allowlisted_loopback_receiver_may_register(client: TestClient) -> None:
    # the test settings allowlist 127.0.0.1/32 (as an operator would an internal receiver)
    _webhook(client, url="http://127.0.0.1:8123/hook")


def test_signing_secret_is_admin_only_shown_once_and_rotates(
    make_client: Callable[..., TestClient],
) -> None:
    admin, member = make_client(), make_client(role="member")
    assert admin.get("/v1/webhook-secret").json() == {
        "exists": False,
        "created_at": None,
        "rotated_at": None,
        "previous_valid_until": None,
    }
    assert member.post("/v1/webhook-secret").status_code == 403
    first = admin.post("/v1/webhook-secret")
    assert first.status_code == 201 and first.json()["secret"].startswith("whsec_")
    assert first.json()["previous_valid_until"] is None
    second = admin.post("/v1/webhook-secret").json()
    assert second["secret"] != first.json()["secret"] and second["rotated_at"] is not None
    assert second["previous_valid_until"] is not None  # the old one signs too, for a while
    state = member.get("/v1/webhook-secret").json()
    assert state["exists"] is True and "secret" not in state


def test_endpoints_are_managed_by_admin_keys_and_read_by_members(
    make_client: Callable[..., TestClient],
) -> None:
    """A tenant endpoint hears every member's jobs, so only an admin may point one somewhere;
    a member still names a callback_url for a job of its own."""
    admin, member = make_client(), make_client(role="member")
    refused = member.post("/v1/webhooks", json={"url": HOOK, "event_types": ["job.succeeded"]})
    assert refused.status_code == 403
    assert "admin" in refused.json()["error"]["message"]
    endpoint = _webhook(admin)
    assert member.get("/v1/webhooks").json()["items"][0]["id"] == endpoint["id"]
    assert "secret" not in member.get(f"/v1/webhooks/{endpoint['id']}").json()
    assert member.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 403
    assert admin.get(f"/v1/webhooks/{endpoint['id']}").status_code == 200
    assert admin.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204


def test_callback_url_needs_a_signing_secret_and_passes_the_guard(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    with pytest.raises(AssertionError, match="webhook-secret"):
        make_valuation(callback_url=HOOK)
    client.post("/v1/webhook-secret")
    for url in (
        "https://10.1.2.3/cb",
        "https://metadata.google.internal/cb",
        "file:///etc/passwd",
        "https://h.example.com/" + "x" * 2000,
    ):
        with pytest.raises(
            AssertionError, match=r"(?s)\"field\":\"body\.callback_url\".*assert 422 =="
        ):
            make_valuation(callback_url=url)
    valuation = make_valuation(callback_url=HOOK)
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    callback = db.get(JobCallback, row.job_id)
    assert callback is not None and callback.url == HOOK


def test_every_job_creating_request_takes_a_callback_url(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in (
        "ValuationCreate",
        "StudyCreate",
        "ScoreSetCreate",
        "CurationCreate",
        "EvaluationCreate",
    ):
        assert "callback_url" in schemas[name]["properties"], name


def test_a_score_set_callback_is_stored(
    client: TestClient, db: Session, make_dataset: Callable[..., dict[str, Any]]
) -> None:
    client.post("/v1/webhook-secret")
    ds = make_dataset(3)
    response = client.post(
        "/v1/score-sets", json={"scorer": "text", "dataset_id": ds["id"], "callback_url": HOOK}
    )
    assert response.status_code == 202, response.text
    row = db.get(ScoreSet, response.json()["id"])
    assert row is not None and db.get(JobCallback, row.job_id) is not None


def _deliveries(db: Session, job_id: str) -> list[tuple[WebhookEvent, WebhookDelivery]]:
    rows = db.execute(
        select(WebhookEvent, WebhookDelivery)
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .where(WebhookEvent.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.url)
    ).all()
    return [(e, d) for e, d in rows]


def test_a_status_change_writes_its_events_in_its_transaction(
    client: TestClient, db: Session, make_valuation: Any, dispatched: list[str]
) -> None:
    """The API's cancel of a queued job: the event and one delivery per destination (the
    endpoint subscribed to job.cancelled, the job's callback_url) commit with the status."""
    client.post("/v1/webhook-secret")
    cancelled = _webhook(client, event_types=["job.cancelled"])
    _webhook(client, url="https://other.example.com/x", event_types=["job.succeeded"])
    valuation = make_valuation(callback_url="https://cb.example.com/done")
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    assert _deliveries(db, row.job_id) == []  # queued: nothing to tell yet
    assert client.post(f"/v1/valuations/{valuation['id']}/cancel").status_code == 202
    found = _deliveries(db, row.job_id)
    assert sorted(d.url for _, d in found) == ["https://cb.example.com/done", HOOK]
    event = found[0][0]
    assert {e.id for e, _ in found} == {event.id} and event.type == "job.cancelled"
    import json

    body = json.loads(event.payload)
    assert body["type"] == "job.cancelled" and body["timestamp"].endswith("Z")
    assert body["data"] == {
        "job_id": row.job_id,
        "kind": "valuation",
        "resource_id": valuation["id"],
        "resource_url": f"/v1/valuations/{valuation['id']}",
        "status": "cancelled",
        "error": None,
    }
    assert all(d.status == "pending" and d.attempts == 0 for _, d in found)
    assert {d.endpoint_id for _, d in found} == {cancelled["id"], None}
    assert sorted(dispatched) == sorted(d.id for _, d in found)  # sent after the commit

    log = client.get("/v1/webhook-deliveries", params={"job_id": row.job_id}).json()
    assert log["total"] == 2
    by_destination = {d["destination"]: d for d in log["items"]}
    assert by_destination["callback_url"]["webhook_id"] is None
    entry = by_destination["webhook"]
    assert entry["event_type"] == "job.cancelled" and entry["status"] == "pending"
    assert entry["attempts"] == 0 and entry["next_attempt_at"] is not None
    assert entry["in_flight"] is False and entry["last_status_code"] is None
    mine = client.get(f"/v1/webhooks/{cancelled['id']}/deliveries").json()
    assert [d["id"] for d in mine["items"]] == [entry["id"]]
    assert client.get("/v1/webhook-deliveries", params={"status": "succeeded"}).json()["total"] == 0


def test_a_worker_finishing_the_job_tells_subscribers_only(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    _webhook(client, event_types=["job.failed"])
    ok = _webhook(client, url="https://ok.example.com/x", event_types=["job.succeeded"])
    valuation = make_valuation()
    finish_valuation(db, valuation["id"])  # job.status = succeeded, committed (ORM)
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    found = _deliveries(db, row.job_id)
    assert [(e.type, d.endpoint_id) for e, d in found] == [("job.succeeded", ok["id"])]


def test_deleting_a_webhook_drops_its_pending_deliveries(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    hook = _webhook(client, event_types=["job.succeeded"])
    valuation = make_valuation()
    finish_valuation(db, valuation["id"])
    assert client.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["total"] == 1
    assert client.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert db.scalars(select(WebhookDelivery)).all() == []


def test_another_tenant_gets_404_and_empty_lists(
    make_client: Callable[..., TestClient], db: Session, make_valuation: Any
) -> None:
    a, b = make_client("team-a"), make_client("team-b")
    hook = _webhook(a, event_types=["job.succeeded"])
    valuation = make_valuation()
    finish_valuation(db, valuation["id"])
    assert a.get("/v1/webhook-deliveries").json()["total"] == 1
    for path in (f"/v1/webhooks/{hook['id']}", f"/v1/webhooks/{hook['id']}/deliveries"):
        assert b.get(path).status_code == 404, path
    assert b.delete(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert b.get("/v1/webhooks").json()["total"] == 0
    assert b.get("/v1/webhook-deliveries").json() == {
        "items": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
    }
    assert b.get("/v1/webhook-secret").json()["exists"] is False
    assert a.get(f"/v1/webhooks/{hook['id']}").status_code == 200
