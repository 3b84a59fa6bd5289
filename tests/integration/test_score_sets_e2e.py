"""Seed 003 scorers as jobs through the production stack: HTTP → Celery worker → Postgres → S3.

The planted pool holds 8 records of each of five tasks; the probes are of one task ("capital").
Importance baselines must put that task first; quality and text scorers must give every record
a value; the distribution and comparison views must agree with the stored values.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.test_valuation_e2e import _model, _records, _upload
from workers.contracts import IFD_COLUMNS, QUALITY_COLUMNS, TEXT_COLUMNS

pytestmark = pytest.mark.integration

PER_TASK = 8


def _score_set(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/score-sets", json=body)
    assert response.status_code == 202, response.text
    path = f"/v1/score-sets/{response.json()['id']}"
    deadline = time.monotonic() + 600
    while (done := api.get(path).json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"stuck: {done}"
        time.sleep(0.3)
    assert done["status"] == "succeeded", done["error"]
    return done


def _values(api: httpx.Client, score_set_id: str) -> dict[str, dict[str, float | None]]:
    page = api.get(f"/v1/score-sets/{score_set_id}/values", params={"limit": 1000}).json()
    return {item["record_id"]: item["values"] for item in page["items"]}


def test_scorers_end_to_end(api: httpx.Client) -> None:
    pool_rows = _records("pool.jsonl", per_task=PER_TASK)
    task_of = {row["id"]: row["metadata"]["task"] for row in pool_rows}
    pool = _upload(api, "ss-pool", pool_rows)
    probes = _upload(api, "ss-probes", _records("probes.jsonl"))
    model_id = _model(api)
    base = {"dataset_id": pool["id"], "settings": {"max_length": 96, "k": 3}}

    quality = _score_set(api, {**base, "scorer": "quality", "model_id": model_id})
    assert quality["columns"] == [*QUALITY_COLUMNS, *IFD_COLUMNS]
    values = _values(api, quality["id"])
    assert set(values) == set(task_of)
    for row in values.values():
        assert row["perplexity"] == pytest.approx(2.718281828459045 ** row["nll"])
        assert row["ifd"] == pytest.approx(row["nll"] / row["nll_a"])
    nll = quality["summary"]["nll"]
    assert nll["count"] == len(task_of) and nll["missing"] == 0
    assert sum(nll["histogram"]["counts"]) == len(task_of)

    text = _score_set(api, {**base, "scorer": "text"})
    assert text["columns"] == list(TEXT_COLUMNS)
    by_id = {row["id"]: row for row in pool_rows}
    for record_id, row in _values(api, text["id"]).items():
        assert row["response_chars"] == len(by_id[record_id]["response"])

    knn = _score_set(api, {**base, "scorer": "knn"})
    assert all(0 <= v["knn_distance"] <= 2 for v in _values(api, knn["id"]).values())

    ranked: dict[str, list[str]] = {}
    for scorer in ("bm25", "dsir", "rds", "random"):
        done = _score_set(api, {**base, "scorer": scorer, "probe_dataset_id": probes["id"]})
        assert done["columns"] == ["score", "subtask:capital"]
        scores = _values(api, done["id"])
        ranked[scorer] = sorted(scores, key=lambda r: (-scores[r]["score"], r))
        hits = sum(task_of[r] == "capital" for r in ranked[scorer][:PER_TASK])
        print(f"\n{scorer}: {hits}/{PER_TASK} of the top {PER_TASK} are 'capital'")
        if scorer != "random":
            assert hits >= PER_TASK - 1, scorer
        ranked[scorer + ":id"] = [done["id"]]

    png = api.get(f"/v1/score-sets/{quality['id']}/distribution.png", params={"column": "nll"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    distribution = api.get(
        f"/v1/score-sets/{quality['id']}/distribution", params={"column": "ifd"}
    ).json()
    assert distribution["count"] == len(task_of)

    comparison = api.get(
        "/v1/score-sets/compare",
        params={
            "a": ranked["bm25:id"][0],
            "a_column": "score",
            "b": ranked["dsir:id"][0],
            "b_column": "score",
            "k": PER_TASK,
        },
    )
    assert comparison.status_code == 200, comparison.text
    body = comparison.json()
    assert body["n_common"] == len(task_of)
    expected = len(set(ranked["bm25"][:PER_TASK]) & set(ranked["dsir"][:PER_TASK]))
    assert body["top_k"]["overlap"] == expected
    assert body["spearman"] > 0
