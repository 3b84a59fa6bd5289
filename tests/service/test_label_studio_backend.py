"""Sift as a Label Studio ML backend (service/integrations/label_studio_backend.py), through
the app: Label Studio's four calls, Basic auth with a key as the password, tenancy, input.
The same routes against a real Label Studio: tests/integration/test_label_studio.py."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.client import Client, models
from service.db.models import JobStatus
from service.integrations.label_studio_backend import basic_password
from tests.service.conftest import api_key, finish_valuation

RANKED = [("p3", 0.9), ("p0", 0.25), ("p4", 0.0), ("p1", -0.5), ("p2", -1.75)]


def _basic(password: str, user: str = "sift") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def _url(valuation_id: str, call: str) -> str:
    return f"/v1/label-studio/valuations/{valuation_id}/{call}"


def _task(task_id: int, record_id: Any, **data: Any) -> dict[str, Any]:
    # what Label Studio's TaskSimpleSerializer sends, trimmed
    return {
        "id": task_id,
        "data": {"sift_record_id": record_id, "prompt": "q", **data},
        "meta": {},
        "annotations": [],
        "predictions": [],
        "project": 1,
    }


@pytest.fixture()
def scored(
    client: TestClient,
    db: Session,
    make_dataset: Callable[..., dict[str, Any]],
    make_valuation: Any,
) -> dict[str, Any]:
    pool = make_dataset(
        name="pool", recs=[{"id": f"p{i}", "prompt": f"q{i}", "response": "a"} for i in range(5)]
    )
    valuation = make_valuation(pool=pool)
    finish_valuation(db, valuation["id"], RANKED)
    return valuation


def test_label_studio_calls_with_basic_auth(
    anonymous: TestClient, db: Session, scored: dict[str, Any]
) -> None:
    vid = scored["id"]
    auth = _basic(api_key(db, "team-a", "read_only"))  # nothing here writes: read_only will do
    health = anonymous.get(_url(vid, "health"), headers=auth)
    assert health.status_code == 200, health.text
    assert health.json() == {
        "status": "UP",
        "model_class": "Sift",
        "valuation_id": vid,
        "valuation_status": "succeeded",
    }
    setup = anonymous.post(
        _url(vid, "setup"),
        headers=auth,
        json={
            "project": "1.1764000000",
            "schema": "<View/>",
            "hostname": "http://localhost:8080",
            "access_token": "ls-token",
            "extra_params": None,
        },
    )
    assert setup.status_code == 200, setup.text
    version = setup.json()["model_version"]
    assert version == f"sift-less-{vid}"
    tasks = [
        _task(11, "p1"),
        _task(12, "nope"),  # not in the valuation
        _task(13, "p3"),
        {"id": 14, "data": {"text": "no record id"}},
        _task(15, 7),  # an integer id is read as its text: no record "7"
        _task(16, True),  # not an id
        _task(17, "p2"),
        _task(18, "p1"),  # the same record twice
    ]
    predict = anonymous.post(
        _url(vid, "predict"),
        headers=auth,
        json={"tasks": tasks, "project": "1.1764000000", "label_config": "<View/>", "params": {}},
    )
    assert predict.status_code == 200, predict.text
    body = predict.json()
    assert body["model_version"] == version
    scores = dict(RANKED)

    def one(record: str) -> list[dict[str, Any]]:
        return [{"result": [], "score": scores[record], "model_version": version}]

    assert body["results"] == [one("p1"), [], one("p3"), [], [], [], one("p2"), one("p1")]
    hook = anonymous.post(
        _url(vid, "webhook"), headers=auth, json={"action": "ANNOTATION_CREATED", "project": {}}
    )
    assert hook.status_code == 200 and hook.json() == {
        "status": "ok",
        "action": "ANNOTATION_CREATED",
    }


def test_the_client_reaches_the_backend_routes(
    app: FastAPI, db: Session, scored: dict[str, Any]
) -> None:
    """``Client.label_studio`` (a check of a connection before Label Studio gets it), with the
    replies' generated types; the webhook's is ``LabelStudioWebhookRead``, named apart from the
    webhooks feature's ``WebhookRead``."""
    vid = scored["id"]
    with TestClient(app, raise_server_exceptions=True) as http:
        sift = Client(api_key=api_key(db, "team-a", "read_only"), http=http)
        health = sift.label_studio.health(vid)
        assert (health.status, health.valuation_status) == ("UP", "succeeded")
        assert sift.label_studio.setup(vid, {"project": "1.1"}).model_version == f"sift-less-{vid}"
        predicted = sift.label_studio.predict(vid, [_task(1, "p0"), _task(2, "nope")])
        assert [[p.score for p in r] for r in predicted.results] == [[0.25], []]
        hook = sift.label_studio.webhook(vid, {"action": "PROJECT_UPDATED"})
        assert isinstance(hook, models.LabelStudioWebhookRead)
        assert (hook.status, hook.action) == ("ok", "PROJECT_UPDATED")
    schemas = app.openapi()["components"]["schemas"]
    assert "LabelStudioWebhookRead" in schemas
    assert not [name for name in schemas if name.startswith("service__integrations")]


def test_bearer_works_too_and_the_user_name_does_not_matter(
    client: TestClient, anonymous: TestClient, db: Session, scored: dict[str, Any]
) -> None:
    vid = scored["id"]
    body = {"tasks": [_task(1, "p0")]}
    response = client.post(_url(vid, "predict"), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0][0]["score"] == 0.25
    key = api_key(db, "team-a", "member")
    for user in ("sift", "anything", ""):
        response = anonymous.post(_url(vid, "predict"), json=body, headers=_basic(key, user))
        assert response.status_code == 200, (user, response.text)


def test_keys_are_checked_and_tenant_scoped(
    anonymous: TestClient, db: Session, scored: dict[str, Any]
) -> None:
    vid = scored["id"]
    for headers in (
        {},
        _basic("not-a-key"),
        _basic("sift_unknown0000000000000000000000000000000000"),
        {"authorization": "Basic !!!not base64"},
        {"authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"authorization": "Bearer sift_unknown"},
    ):
        for method, call in (("GET", "health"), ("POST", "predict")):
            response = anonymous.request(method, _url(vid, call), headers=headers, json={})
            assert response.status_code == 401, (headers, call, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer") and "Basic" in challenge
    other = _basic(api_key(db, "team-b"))
    for method, call in (
        ("GET", "health"),
        ("POST", "setup"),
        ("POST", "predict"),
        ("POST", "webhook"),
    ):
        response = anonymous.request(
            method, _url(vid, call), headers=other, json={"tasks": [_task(1, "p0")]}
        )
        assert response.status_code == 404, (call, response.text)
        # whatever the body: the valuation is looked up first
        response = anonymous.request(method, _url(vid, call), headers=other, content=b"{")
        assert response.status_code == 404, (call, response.text)
    assert anonymous.get(_url("nope", "health"), headers=other).status_code == 404


def test_a_valuation_that_has_not_succeeded_is_a_409_but_healthy(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    running = make_valuation()
    health = client.get(_url(running["id"], "health"))
    assert health.status_code == 200 and health.json()["valuation_status"] == "queued"
    for call in ("setup", "predict"):
        response = client.post(_url(running["id"], call), json={"tasks": []})
        assert response.status_code == 409, response.text
        assert "queued" in response.json()["error"]["message"]
    failed = make_valuation()
    finish_valuation(db, failed["id"], status=JobStatus.failed)
    assert client.post(_url(failed["id"], "setup"), json={}).status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.tasks"),
        ({"tasks": {"id": 1}}, "body.tasks"),
        ({"tasks": [{"data": {}}]}, "body.tasks.0.id"),
        ({"tasks": [{"id": -1, "data": {}}]}, "body.tasks.0.id"),
        ({"tasks": [{"id": 1, "data": "p0"}]}, "body.tasks.0.data"),
        ({"tasks": [{"id": 2**60, "data": {}}]}, "body.tasks.0.id"),
        ({"tasks": [], "label_config": 3}, "body.label_config"),
    ],
)
def test_predict_validates_its_body(
    client: TestClient, scored: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = client.post(_url(scored["id"], "predict"), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_predict_answers_many_tasks_in_order(client: TestClient, scored: dict[str, Any]) -> None:
    tasks = [_task(i, f"p{i % 7}") for i in range(1200)]  # more ids than one IN (...) chunk
    response = client.post(_url(scored["id"], "predict"), json={"tasks": tasks})
    assert response.status_code == 200, response.text
    scores = dict(RANKED)
    got = [r[0]["score"] if r else None for r in response.json()["results"]]
    assert got == [scores.get(f"p{i % 7}") for i in range(1200)]


def test_basic_password() -> None:
    def enc(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic_password(enc("u:sift_abc")) == "sift_abc"
    assert basic_password(enc(":sift_abc")) == "sift_abc"
    assert basic_password(enc("u:pa:ss")) == "pa:ss"
    assert basic_password("basic " + base64.b64encode(b"u:k").decode()) == "k"
    for bad in (None, "", "Basic", "Basic ", enc("u:"), enc("nocolon"), "Bearer x", "Basic @@"):
        assert basic_password(bad) is None, bad
