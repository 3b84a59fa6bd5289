"""Seed 003 scorers as jobs through the production stack: HTTP → Celery worker → Postgres → S3.

The planted pool holds 8 records of each of five tasks; the probes are of one task ("capital").
Importance baselines must put that task first; quality and text scorers must give every record
a value; the distribution and comparison views must agree with the stored values. A knn set's
diversity report must agree with its column; a reward set must store what its judge (an HTTP
server here) or rule (``contains`` against ``metadata.label``) gives each record.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    report, n = knn["report"], len(task_of)
    distances = [
        d for v in _values(api, knn["id"]).values() if (d := v["knn_distance"]) is not None
    ]
    assert len(distances) == n and all(0 <= d <= 2 for d in distances)
    assert report["n"] == n and report["k"] == 3 and report["n_clusters"] == 8
    assert knn["settings"]["n_clusters"] == 8  # the default, written back
    assert 1.0 <= report["vendi"] <= n
    assert report["knn_mean"] == pytest.approx(sum(distances) / n, rel=1e-9, abs=1e-12)
    assert report["knn_mean"] == pytest.approx(knn["summary"]["knn_distance"]["mean"])
    assert report["inertia"] >= 0
    assert quality["report"] is None and text["report"] is None

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


# --- the reward scorer -------------------------------------------------------------------------


def judge_reward(prompt: str, response: str) -> float:
    """What the judge gives: depends on both the prompt and the response."""
    return len(response) + 0.01 * len(prompt)


class _Judge(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append(body)
        payload = json.dumps({"reward": judge_reward(body["prompt"], body["response"])}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def judge_url() -> Iterator[str]:
    _Judge.seen.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/judge"
    finally:
        server.shutdown()


def _reward_spec(api: httpx.Client, name: str, spec: dict[str, Any]) -> str:
    response = api.post("/v1/reward-specs", json={"name": name, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_reward_sets_store_each_records_reward(api: httpx.Client, judge_url: str) -> None:
    rows = _records("pool.jsonl", per_task=3)
    pool = _upload(api, "ss-reward-pool", rows)
    judge = _reward_spec(api, "ss-judge", {"kind": "http_judge", "url": judge_url})
    judged = _score_set(
        api, {"scorer": "reward", "dataset_id": pool["id"], "reward_spec_id": judge}
    )
    assert judged["columns"] == ["reward"] and judged["reward_spec_id"] == judge
    assert judged["report"] is None
    rewards = _values(api, judged["id"])
    expected = {r["id"]: judge_reward(r["prompt"], r["response"]) for r in rows}
    assert {k: v["reward"] for k, v in rewards.items()} == pytest.approx(expected)
    # the judge saw each record once, as NICE shows it a sample: record id, prompt, response
    assert sorted(body["probe_id"] for body in _Judge.seen) == sorted(expected)
    assert all(body["label"] is None for body in _Judge.seen)  # no metadata.label here

    capitals = [
        ("Paris", "The capital of France is Paris.", "paris"),
        ("Rome", "It is Rome, I think.", "Rome"),
        ("Oslo", "I do not know.", "Oslo"),
        ("Lima", "Lima is the answer", "LIMA"),
    ]
    labelled = _upload(
        api,
        "ss-labelled",
        [
            {
                "id": f"c{i}",
                "prompt": f"What is the capital of the country whose capital is {city}?",
                "response": response,
                "metadata": {"label": label},
            }
            for i, (city, response, label) in enumerate(capitals)
        ],
    )
    contains = _reward_spec(api, "ss-contains", {"kind": "contains"})
    by_rule = _score_set(
        api, {"scorer": "reward", "dataset_id": labelled["id"], "reward_spec_id": contains}
    )
    values = _values(api, by_rule["id"])
    assert [values[f"c{i}"]["reward"] for i in range(4)] == [1.0, 1.0, 0.0, 1.0]
    assert by_rule["summary"]["reward"]["mean"] == pytest.approx(0.75)
