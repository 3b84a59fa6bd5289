from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.models import JobStatus
from tests.service.conftest import finish_valuation

# Pool record ids in rank order; note the tie at 0.5 (rank breaks it) and the negative tail.
RANKED = [("p7", 0.9), ("p2", 0.5), ("p5", 0.5), ("p0", 0.3), ("p9", 0.1), ("p1", 0.0),
          ("p3", -0.1), ("p4", -0.2), ("p6", -0.5), ("p8", -0.9)]  # fmt: skip


@pytest.fixture()
def scored(
    client: TestClient,
    db: Session,
    make_dataset: Callable[..., dict[str, Any]],
    make_valuation: Any,
) -> dict[str, Any]:
    recs = [
        {
            "id": f"p{i}",
            "prompt": f"q{i}",
            "response": f"a{i}",
            "metadata": {"zeta": i, "alpha": "keep order"},
        }
        for i in range(10)
    ]
    pool = make_dataset(name="pool", recs=recs)
    valuation = make_valuation(pool=pool)
    finish_valuation(db, valuation["id"], RANKED)
    return valuation


def _select(client: TestClient, valuation_id: str, rule: str, value: Any) -> Any:
    return client.post(
        f"/v1/valuations/{valuation_id}/selections", json={"rule": rule, "value": value}
    )


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        ("top_k", 3, ["p7", "p2", "p5"]),
        ("top_k", 3.0, ["p7", "p2", "p5"]),
        ("top_k", 100, [r for r, _ in RANKED]),
        ("top_fraction", 0.3, ["p7", "p2", "p5"]),  # ceil(0.3 * 10) = 3, not 4
        ("top_fraction", 0.25, ["p7", "p2", "p5"]),  # ceil(2.5) = 3
        ("top_fraction", 0.01, ["p7"]),
        ("top_fraction", 1, [r for r, _ in RANKED]),
        ("threshold", 0.5, ["p7", "p2", "p5"]),
        ("threshold", 0.0, ["p7", "p2", "p5", "p0", "p9", "p1"]),
        ("threshold", 2.0, []),
    ],
)
def test_rules(
    client: TestClient, scored: dict[str, Any], rule: str, value: Any, expected: list[str]
) -> None:
    response = _select(client, scored["id"], rule, value)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rule"] == rule and body["value"] == value
    assert body["record_ids"] == expected and body["n_selected"] == len(expected)
    assert body["valuation_id"] == scored["id"]
    assert client.get(f"/v1/selections/{body['id']}").json() == body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rule": "top_k", "value": 0}, "body.value"),
        ({"rule": "top_k", "value": 2.5}, "body.value"),
        ({"rule": "top_k", "value": -1}, "body.value"),
        ({"rule": "top_fraction", "value": 0}, "body.value"),
        ({"rule": "top_fraction", "value": 1.5}, "body.value"),
        ({"rule": "median", "value": 1}, "body.rule"),
        ({"rule": "top_k"}, "body.value"),
        ({"value": 3}, "body.rule"),
        ({"rule": "top_k", "value": "three"}, "body.value"),
    ],
)
def test_bad_selection_bodies(
    client: TestClient, scored: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = client.post(f"/v1/valuations/{scored['id']}/selections", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_selection_needs_succeeded_valuation(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    valuation = make_valuation()
    response = _select(client, valuation["id"], "top_k", 1)
    assert response.status_code == 409 and "queued" in response.json()["error"]["message"]
    finish_valuation(db, valuation["id"], status=JobStatus.cancelled)
    assert _select(client, valuation["id"], "top_k", 1).status_code == 409
    assert _select(client, "nope", "top_k", 1).status_code == 404
    assert client.get("/v1/selections/nope").status_code == 404
    assert client.get("/v1/selections/nope/export").status_code == 404


def test_export_streams_raw_records_in_rank_order(
    client: TestClient, scored: dict[str, Any]
) -> None:
    selection = _select(client, scored["id"], "top_k", 4).json()
    response = client.get(f"/v1/selections/{selection['id']}/export", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["p7", "p2", "p5", "p0"]
    # Verbatim: the uploaded object, keys in their original order, metadata included.
    assert lines[0] == json.dumps(
        {
            "id": "p7",
            "prompt": "q7",
            "response": "a7",
            "metadata": {"zeta": 7, "alpha": "keep order"},
        }
    )
    default = client.get(f"/v1/selections/{selection['id']}/export")
    assert default.text == response.text


def test_export_empty_selection_and_bad_format(client: TestClient, scored: dict[str, Any]) -> None:
    selection = _select(client, scored["id"], "threshold", 5.0).json()
    response = client.get(f"/v1/selections/{selection['id']}/export")
    assert response.status_code == 200 and response.text == ""
    response = client.get(f"/v1/selections/{selection['id']}/export", params={"format": "csv"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "query.format"
