"""Curations through the production stack: score sets → filters → rank / diversity pick →
quotas → export, on the planted pool (8 records of each of five tasks, probes of "capital")."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.integration.test_valuation_e2e import _model, _records, _upload

pytestmark = pytest.mark.integration

PER_TASK = 8


def _finished(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 202, response.text
    url = f"{path}/{response.json()['id']}"
    deadline = time.monotonic() + 600
    while (done := api.get(url).json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"stuck: {done}"
        time.sleep(0.3)
    assert done["status"] == "succeeded", done["error"]
    return done


def _values(api: httpx.Client, score_set_id: str, column: str) -> dict[str, float | None]:
    page = api.get(f"/v1/score-sets/{score_set_id}/values", params={"limit": 1000}).json()
    return {item["record_id"]: item["values"][column] for item in page["items"]}


def test_curations_end_to_end(api: httpx.Client) -> None:
    rows = _records("pool.jsonl", per_task=PER_TASK)
    task_of = {row["id"]: row["metadata"]["task"] for row in rows}
    pool = _upload(api, "cu-pool", rows)
    probes = _upload(api, "cu-probes", _records("probes.jsonl"))
    base = {"dataset_id": pool["id"], "settings": {"max_length": 96}}
    quality = _finished(
        api, "/v1/score-sets", {**base, "scorer": "quality", "model_id": _model(api)}
    )
    bm25 = _finished(
        api, "/v1/score-sets", {**base, "scorer": "bm25", "probe_dataset_id": probes["id"]}
    )
    nll = _values(api, quality["id"], "nll")
    relevance = _values(api, bm25["id"], "score")

    # Rank: the top of a score, as the values say.
    ranked = _finished(
        api,
        "/v1/curations",
        {
            "dataset_id": pool["id"],
            "pick": {"method": "rank", "by": {"score_set_id": bm25["id"], "column": "score"}},
            "budget": PER_TASK,
        },
    )
    expected = sorted(relevance, key=lambda r: (-relevance[r], r))[:PER_TASK]  # type: ignore[operator]
    assert ranked["record_ids"] == expected
    assert all(task_of[r] == "capital" for r in ranked["record_ids"])

    # Filter (eq. 5: the 75% lowest NLL), then QDIT on relevance, at most 3 per task.
    cutoff = sorted(v for v in nll.values() if v is not None)[int(0.75 * len(nll)) - 1]
    composed = _finished(
        api,
        "/v1/curations",
        {
            "dataset_id": pool["id"],
            "filters": [{"score_set_id": quality["id"], "column": "nll", "max_percentile": 75}],
            "pick": {
                "method": "qdit",
                "quality": {"score_set_id": bm25["id"], "column": "score"},
                "alpha": 0.5,
            },
            "budget": 12,
            "quota": {"by": "metadata.task", "max_per_group": 3},
        },
    )
    picked = composed["record_ids"]
    assert len(picked) == 12 == composed["n_selected"]
    assert all(nll[r] <= cutoff for r in picked)  # type: ignore[operator]
    per_task = {t: sum(task_of[r] == t for r in picked) for t in set(task_of.values())}
    assert max(per_task.values()) <= 3 and composed["stats"]["selected_per_group"] == {
        t: n for t, n in sorted(per_task.items()) if n
    }
    assert composed["stats"]["after_filters"][0]["remaining"] == int(0.75 * len(nll))

    # Diversity picks are deterministic for a seed; the export gives the records in pick order.
    k_center = {"dataset_id": pool["id"], "pick": {"method": "k_center", "seed": 1}, "budget": 5}
    first, second = (_finished(api, "/v1/curations", k_center) for _ in range(2))
    assert first["record_ids"] == second["record_ids"] and len(first["record_ids"]) == 5
    export = api.get(f"/v1/curations/{composed['id']}/export")
    assert [json.loads(line)["id"] for line in export.text.splitlines()] == picked
