"""The score-sets API: what each scorer needs is checked before anything is written, then the
job's life cycle, and reading the worker's results (values, distributions, comparisons)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import service.db.models
import workers.contracts
from service.blobs import BlobStore
from service.db.base import utcnow
from service.db.models import Job, JobStatus, ScoreSet
from service.score_sets.service import average_ranks, spearman
from tests.service.conftest import RecordingQueue, start_running
from workers.contracts import SCORE_SET_RUN, TASK_QUEUES, Scorer, ScoreSetSettings

MakeDataset = Callable[..., dict[str, Any]]


def test_scorers_agree_with_the_contract() -> None:
    assert service.db.models.SCORERS == workers.contracts.SCORERS
    assert get_args(Scorer) == workers.contracts.SCORERS


@pytest.fixture()
def pool(make_dataset: MakeDataset) -> dict[str, Any]:
    return make_dataset(6, name="d")  # records d0 .. d5


@pytest.fixture()
def probes(make_dataset: MakeDataset) -> dict[str, Any]:
    prompt_only = [{"id": "q0", "prompt": "what is 2+2?"}, {"id": "q1", "prompt": "and 3+3?"}]
    return make_dataset(name="q", recs=prompt_only)


def _create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/score-sets", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def _nothing_written(db: Session, queue: RecordingQueue) -> None:
    assert db.scalar(select(func.count()).select_from(ScoreSet)) == 0
    assert queue.sent == []


def test_create_commits_then_enqueues_on_the_gpu_queue(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    pool: dict[str, Any],
    model: dict[str, Any],
) -> None:
    body = _create(
        client, name="pool quality", scorer="quality", dataset_id=pool["id"], model_id=model["id"]
    )
    assert body["status"] == "queued" and body["progress"] == {"done": 0, "total": 0}
    assert body["columns"] is None and body["summary"] is None and body["n_records"] is None
    assert body["model_id"] == model["id"] and body["probe_dataset_id"] is None
    assert body["settings"] == ScoreSetSettings.model_validate({}).model_dump(mode="json")
    assert queue.sent == [(SCORE_SET_RUN, {"score_set_id": body["id"]})]
    assert TASK_QUEUES[SCORE_SET_RUN] == "sift.gpu"
    row = db.get(ScoreSet, body["id"])
    assert row is not None and row.job.kind == "score_set" and row.scorer == "quality"
    got = client.get(f"/v1/score-sets/{body['id']}")
    assert got.status_code == 200 and got.json()["name"] == "pool quality"
    assert client.get("/v1/score-sets/nope").status_code == 404


def test_each_scorer_gets_what_it_needs(
    client: TestClient,
    queue: RecordingQueue,
    pool: dict[str, Any],
    probes: dict[str, Any],
    model: dict[str, Any],
) -> None:
    text = _create(client, scorer="text", dataset_id=pool["id"])
    knn = _create(client, scorer="knn", dataset_id=pool["id"], settings={"k": 5})
    knn_lm = _create(
        client,
        scorer="knn",
        dataset_id=pool["id"],
        model_id=model["id"],
        settings={"embedding": "lm"},
    )
    # importance scorers: prompt-only probes are fine
    bm25 = _create(client, scorer="bm25", dataset_id=pool["id"], probe_dataset_id=probes["id"])
    rds = _create(
        client,
        scorer="rds",
        dataset_id=pool["id"],
        probe_dataset_id=probes["id"],
        settings={"embedding": {"sentence_transformer": "/models/minilm"}},
    )
    assert bm25["probe_dataset_id"] == probes["id"]
    assert rds["settings"]["embedding"] == {"sentence_transformer": "/models/minilm"}
    assert knn_lm["settings"]["embedding"] == "lm"
    ids = [s["id"] for s in (text, knn, knn_lm, bm25, rds)]
    assert [p["score_set_id"] for _, p in queue.sent] == ids
    listed = client.get("/v1/score-sets", params={"limit": 2}).json()
    assert listed["total"] == 5 and len(listed["items"]) == 2
    items = client.get("/v1/score-sets").json()["items"]
    assert sorted(s["id"] for s in items) == sorted(ids)
    created = [s["created_at"] for s in items]
    assert created == sorted(created, reverse=True)  # newest first


def records_with(n: int) -> list[dict[str, Any]]:
    return [{"id": f"w{i}", "prompt": f"q{i}?", "response": f"a{i}"} for i in range(n)]


def test_invalid_requests_are_refused_naming_the_field(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: MakeDataset,
    pool: dict[str, Any],
    probes: dict[str, Any],
    model: dict[str, Any],
) -> None:
    def refused(body: dict[str, Any], field: str, *phrases: str) -> None:
        response = client.post("/v1/score-sets", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field, error
        for phrase in phrases:
            assert phrase in error["message"], error["message"]
        _nothing_written(db, queue)

    d, m, p = pool["id"], model["id"], probes["id"]
    refused({"scorer": "text", "dataset_id": "nope"}, "body.dataset_id", "does not exist")
    # probes: importance scorers need them, the others must not get them
    refused({"scorer": "bm25", "dataset_id": d}, "body.probe_dataset_id", "'bm25'")
    refused(
        {"scorer": "dsir", "dataset_id": d, "probe_dataset_id": "nope"},
        "body.probe_dataset_id",
        "does not exist",
    )
    refused(
        {"scorer": "text", "dataset_id": d, "probe_dataset_id": p},
        "body.probe_dataset_id",
        "importance scorers",
        "'text'",
    )
    refused(
        {"scorer": "quality", "dataset_id": d, "model_id": m, "probe_dataset_id": p},
        "body.probe_dataset_id",
    )
    # models: required iff the scorer (or its embedding) uses one
    refused({"scorer": "quality", "dataset_id": d}, "body.model_id", "'quality'", "model_id")
    refused(
        {"scorer": "quality", "dataset_id": d, "model_id": "nope"},
        "body.model_id",
        "does not exist",
    )
    refused(
        {"scorer": "knn", "dataset_id": d, "settings": {"embedding": "lm"}},
        "body.model_id",
        "'knn' with settings.embedding 'lm'",
    )
    refused(
        {
            "scorer": "rds",
            "dataset_id": d,
            "probe_dataset_id": p,
            "settings": {"embedding": "lm"},
        },
        "body.model_id",
        "'rds'",
    )
    refused({"scorer": "text", "dataset_id": d, "model_id": m}, "body.model_id", "uses no model")
    refused(
        {"scorer": "knn", "dataset_id": d, "model_id": m},
        "body.model_id",
        "settings.embedding 'tfidf' uses no model",
    )
    refused(
        {"scorer": "random", "dataset_id": d, "probe_dataset_id": p, "model_id": m},
        "body.model_id",
        "'random' uses no model",
    )
    # quality reads every record's response; knn needs more than k records
    prompt_only = make_dataset(name="po", recs=[{"id": "x", "prompt": "q?"}, *records_with(1)])
    refused(
        {"scorer": "quality", "dataset_id": prompt_only["id"], "model_id": m},
        "body.dataset_id",
        "1 records without a response",
    )
    refused(
        {"scorer": "knn", "dataset_id": d, "settings": {"k": 6}},
        "body.settings.k",
        "6 records",
        "k=6",
    )
    # the schema
    refused({"scorer": "perplexity", "dataset_id": d}, "body.scorer")
    refused({"scorer": "text", "dataset_id": d, "name": "n" * 201}, "body.name")
    refused({"scorer": "text", "dataset_id": d, "settings": {"k": 0}}, "body.settings.k")
    refused(
        {"scorer": "text", "dataset_id": d, "settings": {"surprise": 1}}, "body.settings.surprise"
    )
    refused({"scorer": "text", "dataset_id": d, "surprise": 1}, "body.surprise")
    refused({"dataset_id": d}, "body.scorer")


def test_knn_accepts_more_records_than_k(client: TestClient, pool: dict[str, Any]) -> None:
    assert _create(client, scorer="knn", dataset_id=pool["id"], settings={"k": 5})["id"]


def test_cancel_and_enqueue_failure(
    client: TestClient, db: Session, queue: RecordingQueue, pool: dict[str, Any]
) -> None:
    score_set_id = _create(client, scorer="text", dataset_id=pool["id"])["id"]
    cancelled = client.post(f"/v1/score-sets/{score_set_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancel_requested"]
    assert client.post(f"/v1/score-sets/{score_set_id}/cancel").status_code == 409
    assert client.post("/v1/score-sets/nope/cancel").status_code == 404
    # a running set is only asked to stop
    running_id = _create(client, scorer="text", dataset_id=pool["id"])["id"]
    row = db.get(ScoreSet, running_id)
    assert row is not None
    start_running(db, row.job_id)
    asked = client.post(f"/v1/score-sets/{running_id}/cancel").json()
    assert asked["status"] == "running" and asked["cancel_requested"] is True

    queue.fail_with = ConnectionError("broker down")
    response = client.post("/v1/score-sets", json={"scorer": "text", "dataset_id": pool["id"]})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    failed = client.get("/v1/score-sets").json()["items"][0]
    assert failed["status"] == "failed" and "broker down" in failed["error"]
    assert failed["finished_at"] is not None


# --- results ---------------------------------------------------------------------------------

NAN = None  # an undefined value, as the worker writes it

# Over d0..d5. Common to mtld and score (both non-null): d0..d3.
#   mtld  : d0 3, d1 1, d2 4, d3 1 (a tie)  -> average ranks 3, 1.5, 4, 1.5
#   score : d0 2, d1 7, d2 1, d3 8          -> ranks          2, 3,   1, 4
#   rho = sum(dx*dy) / sqrt(sum dx^2 * sum dy^2) with mean rank 2.5
#       = (-0.25 - 0.5 - 2.25 - 1.5) / sqrt(4.5 * 5) = -4.5 / sqrt(22.5) = -sqrt(0.9)
TEXT_VALUES: dict[str, list[float | None]] = {
    "ttr": [0.5, 0.25, 0.75, 1.0, 0.5, 0.125],
    "mtld": [3.0, 1.0, 4.0, 1.0, NAN, 5.0],
}
BM25_VALUES: dict[str, list[float | None]] = {
    "score": [2.0, 7.0, 1.0, 8.0, 2.0, NAN],
    "subtask:math & qa": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # constant: no rank correlation
}


def _summary(column: list[float | None], plot_key: str) -> dict[str, Any]:
    present = [v for v in column if v is not None]
    quantiles = dict.fromkeys(("p01", "p05", "p25", "p50", "p75", "p95", "p99"), present[0])
    lo, hi = min(present), max(present)
    return {
        "count": len(present),
        "missing": len(column) - len(present),
        "mean": sum(present) / len(present),
        "std": 0.0,
        "min": lo,
        "max": hi,
        "quantiles": quantiles,
        "histogram": {
            "edges": [lo + (hi - lo) * i / 20 for i in range(21)],
            "counts": [len(present)] + [0] * 19,
        },
        "plot_blob_key": plot_key,
    }


def _finish(
    db: Session,
    tenant_blobs: BlobStore,
    score_set_id: str,
    columns: dict[str, list[float | None]],
    record_ids: list[str],
) -> None:
    """Do what the worker does at the end: the values blob, per-column summaries and PNGs."""
    row = db.get(ScoreSet, score_set_id)
    assert row is not None
    key = f"score_sets/{score_set_id}/values.json"
    tenant_blobs.put_bytes(key, json.dumps({"record_ids": record_ids, "columns": columns}).encode())
    summary = {}
    for name, column in columns.items():
        plot_key = f"score_sets/{score_set_id}/hist-{name.replace(':', '_')}.png"
        tenant_blobs.put_bytes(plot_key, b"\x89PNG " + name.encode())
        summary[name] = _summary(column, plot_key)
    row.values_blob_key, row.summary, row.n_records = key, summary, len(record_ids)
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    job.started_at = job.started_at or utcnow()
    job.finished_at = utcnow()
    db.commit()


@pytest.fixture()
def finished(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    pool: dict[str, Any],
    probes: dict[str, Any],
) -> tuple[str, str]:
    """A text set and a bm25 set over d0..d5, both succeeded."""
    text = _create(client, scorer="text", dataset_id=pool["id"])["id"]
    bm25 = _create(client, scorer="bm25", dataset_id=pool["id"], probe_dataset_id=probes["id"])
    ids = [f"d{i}" for i in range(6)]
    _finish(db, tenant_blobs, text, TEXT_VALUES, ids)
    _finish(db, tenant_blobs, bm25["id"], BM25_VALUES, ids)
    return text, bm25["id"]


def test_results_conflict_until_succeeded(
    client: TestClient, pool: dict[str, Any], finished: tuple[str, str]
) -> None:
    queued = _create(client, scorer="text", dataset_id=pool["id"])["id"]
    for path in (
        f"/v1/score-sets/{queued}/values",
        f"/v1/score-sets/{queued}/distribution?column=ttr",
        f"/v1/score-sets/{queued}/distribution.png?column=ttr",
        f"/v1/score-sets/compare?a={queued}&a_column=ttr&b={finished[0]}&b_column=ttr",
        f"/v1/score-sets/compare?a={finished[0]}&a_column=ttr&b={queued}&b_column=ttr",
    ):
        response = client.get(path)
        assert response.status_code == 409, (path, response.text)
        assert "succeeded" in response.json()["error"]["message"]
    for path in (
        "/v1/score-sets/nope/values",
        "/v1/score-sets/nope/distribution?column=ttr",
        "/v1/score-sets/nope/distribution.png?column=ttr",
        f"/v1/score-sets/compare?a=nope&a_column=ttr&b={finished[0]}&b_column=ttr",
    ):
        assert client.get(path).status_code == 404, path


def test_a_succeeded_set_shows_its_columns_and_summaries(
    client: TestClient, finished: tuple[str, str]
) -> None:
    text, _ = finished
    body = client.get(f"/v1/score-sets/{text}").json()
    assert body["status"] == "succeeded" and body["n_records"] == 6
    assert body["columns"] == ["ttr", "mtld"]
    mtld = body["summary"]["mtld"]
    assert mtld["count"] == 5 and mtld["missing"] == 1 and mtld["max"] == 5.0
    assert len(mtld["histogram"]["edges"]) == 21 and len(mtld["histogram"]["counts"]) == 20
    assert mtld["plot"] == f"/v1/score-sets/{text}/distribution.png?column=mtld"
    assert "plot_blob_key" not in mtld


def test_values_are_paged_in_dataset_order(client: TestClient, finished: tuple[str, str]) -> None:
    text, _ = finished
    page = client.get(f"/v1/score-sets/{text}/values", params={"limit": 2, "offset": 3}).json()
    assert page["total"] == 6 and page["limit"] == 2 and page["offset"] == 3
    assert page["items"] == [
        {"record_id": "d3", "values": {"ttr": 1.0, "mtld": 1.0}},
        {"record_id": "d4", "values": {"ttr": 0.5, "mtld": None}},
    ]
    everything = client.get(f"/v1/score-sets/{text}/values").json()["items"]
    assert [i["record_id"] for i in everything] == [f"d{i}" for i in range(6)]
    assert client.get(f"/v1/score-sets/{text}/values?offset=10").json()["items"] == []
    too_many = client.get(f"/v1/score-sets/{text}/values?limit=51")
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "query.limit"


def test_distribution_and_its_plot(client: TestClient, finished: tuple[str, str]) -> None:
    _, bm25 = finished
    response = client.get(f"/v1/score-sets/{bm25}/distribution", params={"column": "score"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score_set_id"] == bm25 and body["column"] == "score"
    assert body["count"] == 5 and body["missing"] == 1 and body["min"] == 1.0
    assert set(body["quantiles"]) == {"p01", "p05", "p25", "p50", "p75", "p95", "p99"}
    png = client.get(body["plot"])
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png" and png.content == b"\x89PNG score"
    sub = client.get(f"/v1/score-sets/{bm25}/distribution", params={"column": "subtask:math & qa"})
    assert sub.json()["plot"].endswith("distribution.png?column=subtask:math%20%26%20qa")
    assert client.get(sub.json()["plot"]).content == b"\x89PNG subtask:math & qa"
    for path in ("distribution", "distribution.png"):
        unknown = client.get(f"/v1/score-sets/{bm25}/{path}", params={"column": "nll"})
        assert unknown.status_code == 422
        error = unknown.json()["error"]
        assert error["field"] == "query.column"
        assert "'nll'" in error["message"] and "'score', 'subtask:math & qa'" in error["message"]
        missing = client.get(f"/v1/score-sets/{bm25}/{path}")
        assert missing.status_code == 422 and missing.json()["error"]["field"] == "query.column"


def _compare(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/score-sets/compare", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_compare_two_columns(client: TestClient, finished: tuple[str, str]) -> None:
    text, bm25 = finished
    sides = {"a": text, "a_column": "mtld", "b": bm25, "b_column": "score"}
    body = _compare(client, **sides, k=2)
    assert body["a"] == {"score_set_id": text, "column": "mtld", "order": "desc"}
    assert body["b"] == {"score_set_id": bm25, "column": "score", "order": "desc"}
    assert body["n_common"] == 4  # d4 has no mtld, d5 no score
    assert body["spearman"] == pytest.approx(-math.sqrt(0.9))
    # desc: mtld {d2 4, d0 3}, score {d3 8, d1 7}
    assert body["top_k"] == {"k": 2, "overlap": 0, "jaccard": 0.0}
    # k=3: mtld {d2, d0, d1 (tied with d3, the lower id)}, score {d3, d1, d0}
    assert _compare(client, **sides, k=3)["top_k"] == {"k": 3, "overlap": 2, "jaccard": 0.5}
    # asc for mtld: {d1, d3} (tied at 1), against score desc {d3, d1}
    flipped = _compare(client, **sides, k=2, a_order="asc")
    assert flipped["a"]["order"] == "asc"
    assert flipped["top_k"] == {"k": 2, "overlap": 2, "jaccard": 1.0}
    assert flipped["spearman"] == -body["spearman"]  # rankings in opposite directions
    # k=1, ties broken by record id ascending: mtld asc -> d1 (not d3), score desc -> d3
    assert _compare(client, **sides, k=1, a_order="asc")["top_k"] == {
        "k": 1,
        "overlap": 0,
        "jaccard": 0.0,
    }
    # k beyond the common records uses them all
    assert _compare(client, **sides)["top_k"] == {"k": 4, "overlap": 4, "jaccard": 1.0}


def test_compare_edge_cases(client: TestClient, finished: tuple[str, str]) -> None:
    text, bm25 = finished
    same = _compare(client, a=text, a_column="ttr", b=text, b_column="ttr", k=3)
    assert same["n_common"] == 6 and same["spearman"] == pytest.approx(1.0)
    assert same["top_k"] == {"k": 3, "overlap": 3, "jaccard": 1.0}
    constant = _compare(client, a=text, a_column="ttr", b=bm25, b_column="subtask:math & qa")
    assert constant["n_common"] == 6 and constant["spearman"] is None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"a": text, "a_column": "nll", "b": bm25, "b_column": "score"}, "query.a_column"),
        ({"a": text, "a_column": "ttr", "b": bm25, "b_column": "ttr"}, "query.b_column"),
        ({"a": text, "a_column": "ttr", "b": bm25, "b_column": "score", "k": 0}, "query.k"),
        (
            {"a": text, "a_column": "ttr", "b": bm25, "b_column": "score", "a_order": "up"},
            "query.a_order",
        ),
        ({"a": text, "a_column": "ttr", "b_column": "score"}, "query.b"),
    ]
    for params, field in cases:
        response = client.get("/v1/score-sets/compare", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"]["field"] == field


def test_compare_without_common_records(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    make_dataset: MakeDataset,
    finished: tuple[str, str],
) -> None:
    other = make_dataset(2, name="o")
    text = _create(client, scorer="text", dataset_id=other["id"])["id"]
    _finish(db, tenant_blobs, text, {"ttr": [0.5, 0.25]}, ["o0", "o1"])
    body = _compare(client, a=text, a_column="ttr", b=finished[0], b_column="ttr", k=5)
    assert body["n_common"] == 0 and body["spearman"] is None
    assert body["top_k"] == {"k": 0, "overlap": 0, "jaccard": None}


def test_spearman_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    assert average_ranks([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0]) == [
        4.0, 1.5, 5.0, 1.5, 6.5, 9.0, 3.0, 8.0, 6.5,
    ]  # fmt: skip
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 0.5]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert spearman([1.0], [2.0]) is None
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_datasets_of_a_score_set_cannot_be_deleted(
    client: TestClient, pool: dict[str, Any], probes: dict[str, Any]
) -> None:
    score_set_id = _create(
        client, scorer="bm25", dataset_id=pool["id"], probe_dataset_id=probes["id"]
    )["id"]
    for dataset_id in (pool["id"], probes["id"]):
        response = client.delete(f"/v1/datasets/{dataset_id}")
        assert response.status_code == 409, response.text
        assert f"score set {score_set_id}" in response.json()["error"]["message"]


# --- the reward scorer -------------------------------------------------------------------------


def _reward_spec(client: TestClient, name: str, spec: dict[str, Any]) -> str:
    response = client.post("/v1/reward-specs", json={"name": name, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _labelled(name: str, labels: list[Any]) -> list[dict[str, Any]]:
    """Records name0.. with metadata.label (left out where the label is ``...``)."""
    return [
        {
            "id": f"{name}{i}",
            "prompt": f"what is {i}+{i}?",
            "response": f"it is {2 * i}",
            "metadata": {} if label is ... else {"label": label},
        }
        for i, label in enumerate(labels)
    ]


def test_reward_sets_take_a_reward_spec(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: MakeDataset,
    pool: dict[str, Any],
) -> None:
    judge = _reward_spec(client, "judge", {"kind": "http_judge", "url": "http://127.0.0.1:9/j"})
    contains = _reward_spec(client, "contains", {"kind": "contains"})
    tests = _reward_spec(client, "tests", {"kind": "python_tests"})
    # a judge needs no label: any dataset with responses
    judged = _create(client, scorer="reward", dataset_id=pool["id"], reward_spec_id=judge)
    assert judged["reward_spec_id"] == judge and judged["report"] is None
    row = db.get(ScoreSet, judged["id"])
    assert row is not None and row.reward_spec_id == judge and row.scorer == "reward"
    labelled = make_dataset(name="l", recs=_labelled("l", ["0", "2", "5"]))
    assert _create(client, scorer="reward", dataset_id=labelled["id"], reward_spec_id=contains)
    code = [
        {
            "id": "c0",
            "prompt": "def f(x):\n",
            "response": "    return x\n",
            "metadata": {"test": "def check(f):\n    assert f(1) == 1\n", "entry_point": "f"},
        }
    ]
    programs = make_dataset(name="code", recs=code)
    assert _create(client, scorer="reward", dataset_id=programs["id"], reward_spec_id=tests)
    assert len(queue.sent) == 3
    # other scorers show no reward spec
    assert _create(client, scorer="text", dataset_id=pool["id"])["reward_spec_id"] is None


def test_reward_requests_are_refused_naming_the_field(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: MakeDataset,
    pool: dict[str, Any],
) -> None:
    def refused(body: dict[str, Any], field: str, *phrases: str) -> None:
        response = client.post("/v1/score-sets", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field, error
        for phrase in phrases:
            assert phrase in error["message"], error["message"]
        _nothing_written(db, queue)

    d = pool["id"]
    judge = _reward_spec(client, "judge", {"kind": "http_judge", "url": "http://127.0.0.1:9/j"})
    contains = _reward_spec(client, "contains", {"kind": "contains"})
    numeric = _reward_spec(client, "numeric", {"kind": "numeric"})
    tests = _reward_spec(client, "tests", {"kind": "python_tests"})
    refused({"scorer": "reward", "dataset_id": d}, "body.reward_spec_id", "give a reward_spec_id")
    refused(
        {"scorer": "reward", "dataset_id": d, "reward_spec_id": "nope"},
        "body.reward_spec_id",
        "reward spec nope does not exist",
    )
    refused(
        {"scorer": "text", "dataset_id": d, "reward_spec_id": judge},
        "body.reward_spec_id",
        "for scorer 'reward', not 'text'",
    )
    refused(
        {"scorer": "reward", "dataset_id": d, "reward_spec_id": judge, "model_id": "x"},
        "body.model_id",
        "'reward' uses no model",
    )
    prompt_only = make_dataset(name="po", recs=[{"id": "x", "prompt": "q?"}, *records_with(1)])
    refused(
        {"scorer": "reward", "dataset_id": prompt_only["id"], "reward_spec_id": judge},
        "body.dataset_id",
        "1 records without a response",
    )
    # label kinds: every record needs a string metadata.label, and the message names those
    # without (a number is not a label: labels are compared as text)
    refused(
        {"scorer": "reward", "dataset_id": d, "reward_spec_id": contains},
        "body.dataset_id",
        "6 records without a non-empty string metadata.label",
        "'contains' reward",
        "d0, d1, d2, d3, d4, d5",
    )
    some = make_dataset(name="s", recs=_labelled("s", ["0", ..., 4, "", "8"]))
    refused(
        {"scorer": "reward", "dataset_id": some["id"], "reward_spec_id": numeric},
        "body.dataset_id",
        "3 records",
        ": s1, s2, s3",
    )
    many = make_dataset(name="m", recs=_labelled("m", [...] * 25))
    refused(
        {"scorer": "reward", "dataset_id": many["id"], "reward_spec_id": contains},
        "body.dataset_id",
        "25 records",
        "m19 (and 5 more)",
    )
    # python_tests reads metadata.test and metadata.entry_point
    refused(
        {"scorer": "reward", "dataset_id": d, "reward_spec_id": tests},
        "body.dataset_id",
        "metadata.test and metadata.entry_point",
    )


# --- the knn report ----------------------------------------------------------------------------


def test_knn_clusters_default_to_at_most_the_records(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: MakeDataset,
    pool: dict[str, Any],
) -> None:
    for settings, phrase in (
        ({"n_clusters": 7}, "6 records, fewer than the 7 k-means clusters"),
        ({"n_clusters": 0}, ""),
    ):
        response = client.post(
            "/v1/score-sets", json={"scorer": "knn", "dataset_id": pool["id"], "settings": settings}
        )
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == "body.settings.n_clusters" and phrase in error["message"]
        _nothing_written(db, queue)
    small = _create(client, scorer="knn", dataset_id=pool["id"])  # 6 records
    assert small["settings"]["n_clusters"] == 6
    big = make_dataset(20, name="b")
    assert _create(client, scorer="knn", dataset_id=big["id"])["settings"]["n_clusters"] == 8
    chosen = _create(client, scorer="knn", dataset_id=pool["id"], settings={"n_clusters": 6})
    assert chosen["settings"]["n_clusters"] == 6
    # other scorers keep the setting as given (unused)
    assert _create(client, scorer="text", dataset_id=pool["id"])["settings"]["n_clusters"] is None


def test_a_succeeded_knn_set_shows_its_report(
    client: TestClient, db: Session, tenant_blobs: BlobStore, pool: dict[str, Any]
) -> None:
    knn = _create(client, scorer="knn", dataset_id=pool["id"], settings={"k": 2})["id"]
    report = {
        "n": 6,
        "vendi": 4.5,
        "knn_mean": 0.25,
        "k": 2,
        "inertia": 1.5,
        "n_clusters": 6,
        "seed": 0,
    }
    row = db.get(ScoreSet, knn)
    assert row is not None
    row.report = report  # the worker writes it with the values
    db.commit()
    assert client.get(f"/v1/score-sets/{knn}").json()["report"] is None  # until succeeded
    _finish(db, tenant_blobs, knn, {"knn_distance": [0.25] * 6}, [f"d{i}" for i in range(6)])
    body = client.get(f"/v1/score-sets/{knn}").json()
    assert body["report"] == report and body["columns"] == ["knn_distance"]
    listed = client.get("/v1/score-sets").json()["items"]
    assert [s["report"] for s in listed if s["id"] == knn] == [report]


def test_other_sets_have_no_report(client: TestClient, finished: tuple[str, str]) -> None:
    for score_set_id in finished:
        assert client.get(f"/v1/score-sets/{score_set_id}").json()["report"] is None
