"""Self-influence through the API: no probes (optional for these methods only, refused when
given), the scores page without a breakdown, lowest-first selections, and the distribution
of a valuation's scores; a probe-less valuation is deleted and blocks its pool's deletion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.db.models import Score, Valuation
from tests.service.conftest import finish_valuation
from workers.engine.summaries import column_summary

RANKED = [("p7", 0.9), ("p2", 0.5), ("p5", 0.5), ("p0", 0.3), ("p9", 0.1), ("p1", 0.0),
          ("p3", -0.1), ("p4", -0.2), ("p6", -0.5), ("p8", -0.9)]  # fmt: skip


@pytest.fixture()
def pool(make_dataset: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_dataset(
        name="pool", recs=[{"id": f"p{i}", "prompt": "q", "response": f"a{i}"} for i in range(10)]
    )


def _create(client: TestClient, model: dict[str, Any], pool: dict[str, Any], **body: Any) -> Any:
    return client.post(
        "/v1/valuations",
        json={"model_id": model["id"], "pool_dataset_id": pool["id"], **body},
    )


@pytest.fixture()
def scored(
    client: TestClient, db: Session, model: dict[str, Any], pool: dict[str, Any]
) -> dict[str, Any]:
    response = _create(client, model, pool, method="self_influence")
    assert response.status_code == 202, response.text
    valuation = response.json()
    finish_valuation(db, valuation["id"], RANKED)
    for row in db.query(Score).filter(Score.valuation_id == valuation["id"]):
        row.per_subtask = {}  # as the worker writes them for self-influence
    db.commit()
    return valuation


@pytest.mark.parametrize(
    "method", ["self_influence", "self_influence_adam", "self_influence_token_weighted"]
)
def test_self_influence_needs_no_probes(
    client: TestClient, model: dict[str, Any], pool: dict[str, Any], method: str
) -> None:
    response = _create(client, model, pool, method=method)
    assert response.status_code == 202, response.text
    valuation = response.json()
    assert valuation["method"] == method and valuation["probe_dataset_id"] is None
    assert client.get(f"/v1/valuations/{valuation['id']}").json() == valuation
    listed = client.get("/v1/valuations").json()["items"]
    assert valuation["id"] in {v["id"] for v in listed}


def test_probes_are_required_by_the_others_and_refused_by_self_influence(
    client: TestClient,
    model: dict[str, Any],
    pool: dict[str, Any],
    make_dataset: Callable[..., dict[str, Any]],
) -> None:
    probes = make_dataset(2, name="probes")
    for method in ("less", "tracin", "tracin_adam", "datainf"):
        response = _create(client, model, pool, method=method)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (
            error["field"] == "body.probe_dataset_id"
            and "needs a probe_dataset_id" in (error["message"])
        )
    response = _create(client, model, pool, method="self_influence", probe_dataset_id=probes["id"])
    assert response.status_code == 422
    error = response.json()["error"]
    assert (
        error["field"] == "body.probe_dataset_id"
        and "takes no probe_dataset_id" in (error["message"])
    )


def test_scores_page_has_no_breakdown(client: TestClient, scored: dict[str, Any]) -> None:
    page = client.get(f"/v1/valuations/{scored['id']}/scores", params={"limit": 3}).json()
    assert [(s["record_id"], s["per_subtask"]) for s in page["items"]] == [
        ("p7", {}),
        ("p2", {}),
        ("p5", {}),
    ]


@pytest.mark.parametrize(
    ("rule", "value", "order", "expected"),
    [
        ("top_k", 3, "desc", ["p7", "p2", "p5"]),
        ("top_k", 3, "asc", ["p8", "p6", "p4"]),
        ("top_k", 100, "asc", [r for r, _ in reversed(RANKED)]),
        ("top_fraction", 0.25, "asc", ["p8", "p6", "p4"]),  # ceil(2.5) = 3
        ("top_k", 9, "asc", [r for r, _ in reversed(RANKED)][:9]),  # the tie: p5 before p2
        ("threshold", -0.1, "asc", ["p8", "p6", "p4", "p3"]),  # every score <= value
        ("threshold", -0.1, "desc", [r for r, _ in RANKED][:7]),
        ("threshold", -2.0, "asc", []),
    ],
)
def test_lowest_first_selections(
    client: TestClient,
    scored: dict[str, Any],
    rule: str,
    value: float,
    order: str,
    expected: list[str],
) -> None:
    response = client.post(
        f"/v1/valuations/{scored['id']}/selections",
        json={"rule": rule, "value": value, "order": order},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["order"] == order and body["record_ids"] == expected
    assert client.get(f"/v1/selections/{body['id']}").json() == body
    exported = client.get(f"/v1/selections/{body['id']}/export").text.splitlines()
    assert [line.split('"id": "')[1].split('"')[0] for line in exported] == expected


def test_selection_order_defaults_to_desc_and_is_validated(
    client: TestClient, scored: dict[str, Any]
) -> None:
    url = f"/v1/valuations/{scored['id']}/selections"
    default = client.post(url, json={"rule": "top_k", "value": 2}).json()
    assert default["order"] == "desc" and default["record_ids"] == ["p7", "p2"]
    response = client.post(url, json={"rule": "top_k", "value": 2, "order": "lowest"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "body.order"


def test_distribution_of_the_scores(
    client: TestClient, db: Session, scored: dict[str, Any], tenant_blobs: BlobStore
) -> None:
    url = f"/v1/valuations/{scored['id']}/distribution"
    response = client.get(url)
    assert response.status_code == 409 and "before score distributions" in response.text
    summary = column_summary([s for _, s in RANKED])  # what the worker stores when it scores
    plot_key = f"scores/{scored['id']}-hist.png"
    tenant_blobs.put_bytes(plot_key, b"\x89PNG fake")
    row = db.get(Valuation, scored["id"])
    assert row is not None
    row.score_summary = summary | {"plot_blob_key": plot_key}
    db.commit()
    body = client.get(url).json()
    assert body["valuation_id"] == scored["id"] and body["method"] == "self_influence"
    assert body["count"] == 10 and body["max"] == 0.9 and body["min"] == -0.9
    assert body["histogram"] == summary["histogram"] and sum(body["histogram"]["counts"]) == 10
    assert body["plot"] == f"/v1/valuations/{scored['id']}/distribution.png"
    png = client.get(body["plot"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == b"\x89PNG fake"


def test_distribution_conflicts_until_succeeded(
    client: TestClient, model: dict[str, Any], pool: dict[str, Any]
) -> None:
    valuation = _create(client, model, pool, method="self_influence").json()
    for path in ("distribution", "distribution.png"):
        response = client.get(f"/v1/valuations/{valuation['id']}/{path}")
        assert response.status_code == 409 and "queued" in response.text
    assert client.get("/v1/valuations/nope/distribution").status_code == 404


def test_a_probe_less_valuation_blocks_its_pool_and_is_deleted(
    client: TestClient, scored: dict[str, Any], pool: dict[str, Any], tenant_blobs: BlobStore
) -> None:
    tenant_blobs.put_bytes(f"scores/{scored['id']}-hist.png", b"png")
    tenant_blobs.put_bytes(f"scores/{scored['id']}.jsonl", b"{}\n")
    response = client.delete(f"/v1/datasets/{pool['id']}")
    assert response.status_code == 409 and scored["id"] in response.text
    assert client.delete(f"/v1/valuations/{scored['id']}").status_code == 204
    assert not tenant_blobs.exists(f"scores/{scored['id']}-hist.png")
    assert not tenant_blobs.exists(f"scores/{scored['id']}.jsonl")
    assert client.delete(f"/v1/datasets/{pool['id']}").status_code == 204
