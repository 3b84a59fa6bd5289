"""The evaluations API: arms resolved to their records at creation, every reference and the
metric's metadata checked before anything is written, the job life cycle, deletion rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.db.models import Curation, Evaluation, Job, JobStatus, ScoreSet
from tests.service.conftest import RecordingQueue, finish_valuation, records
from workers.contracts import EVALUATION_RUN, TASK_QUEUES


@pytest.fixture()
def inputs(
    client: TestClient,
    db: Session,
    make_dataset: Callable[..., dict[str, Any]],
    make_valuation: Callable[..., dict[str, Any]],
    model: dict[str, Any],
) -> dict[str, Any]:
    pool = make_dataset(5, name="pool")
    target = make_dataset(3, name="target")
    valuation = make_valuation(pool)
    finish_valuation(db, valuation["id"], scores=[(f"pool{i}", 5.0 - i) for i in range(5)])
    selection = client.post(
        f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": 3}
    ).json()
    return {
        "model": model["id"],
        "pool": pool["id"],
        "target": target["id"],
        "selection": selection["id"],
    }


def _body(inputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "model_id": inputs["model"],
        "pool_dataset_id": inputs["pool"],
        "target_dataset_id": inputs["target"],
        "budget": 2,
        "arms": [
            {"kind": "selection", "selection_id": inputs["selection"]},
            {"kind": "random", "seeds": [0, 1]},
            {"kind": "full"},
        ],
        **changes,
    }


def _error(response: Any, status: int = 422) -> tuple[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    return error["field"], error["message"]


def test_create_resolves_arms_commits_then_enqueues(
    client: TestClient, db: Session, queue: RecordingQueue, inputs: dict[str, Any]
) -> None:
    response = client.post("/v1/evaluations", json=_body(inputs))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["result"] is None and body["plots"] is None
    assert queue.sent[-1] == (EVALUATION_RUN, {"evaluation_id": body["id"]})
    assert TASK_QUEUES[EVALUATION_RUN] == "sift.gpu"
    assert [(a["kind"], a["name"], a["n_records"], a["reference"]) for a in body["arms"]] == [
        ("selection", f"selection {inputs['selection'][:8]}", 2, False),
        ("random", "random", None, True),  # the first random arm, by default
        ("full", "full", None, False),
    ]
    row = db.get(Evaluation, body["id"])
    assert row is not None and row.arms[0]["record_ids"] == ["pool0", "pool1"]  # rank order
    assert body["settings"]["training"]["epochs"] == 2 and body["metric"] is None
    listed = client.get("/v1/evaluations").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]
    plot = client.get(f"/v1/evaluations/{body['id']}/plot.png")
    assert _error(plot, 409)[1].startswith(f"evaluation {body['id']} has status 'queued'")
    examples = client.get(f"/v1/evaluations/{body['id']}/examples")
    assert "per-example values exist only once it has succeeded" in _error(examples, 409)[1]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"model_id": "nope"}, "body.model_id", "model nope does not exist"),
        ({"pool_dataset_id": "nope"}, "body.pool_dataset_id", "does not exist"),
        ({"target_dataset_id": "nope"}, "body.target_dataset_id", "does not exist"),
        ({"budget": 4}, "body.arms[0]", "fewer than the budget of 4"),
        (
            {"arms": [{"kind": "selection", "selection_id": "nope"}]},
            "body.arms[0]",
            "selection nope does not exist",
        ),
        (
            {"arms": [{"kind": "full"}, {"kind": "random", "name": "full"}]},
            "body.arms[1].name",
            "two arms are named 'full'",
        ),
        ({"arms": [{"kind": "random", "seeds": [1, 1]}]}, "body.arms[0].seeds", "must differ"),
        ({"reference_arm": "nope"}, "body.reference_arm", "no arm is named 'nope'"),
        ({"arms": [{"kind": "random"}], "budget": 6}, "body.budget", "fewer than the budget"),
        (
            {"metric": {"kind": "reward", "reward_spec_id": "nope"}},
            "body.metric.reward_spec_id",
            "does not exist",
        ),
        (
            {"metric": {"kind": "multiple_choice"}},
            "body.target_dataset_id",
            "3 records without metadata.choices",
        ),
        (  # 2 records, batch 16, 1 epoch: one step, the linear warmup's first, at lr 0
            {"settings": {"training": {"epochs": 1}}},
            "body.settings.training.warmup_ratio",
            "this training cannot learn: an arm of 2 records = 2 training examples, at "
            "batch_size 16 1 step per epoch, x 1 epoch = 1 optimizer step",
        ),
    ],
)
def test_bad_requests_name_their_field_and_write_nothing(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    inputs: dict[str, Any],
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    before = len(queue.sent)
    got_field, got_message = _error(client.post("/v1/evaluations", json=_body(inputs, **change)))
    assert got_field == field and message in got_message, got_message
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0
    assert len(queue.sent) == before


def test_arms_come_from_the_pool_and_need_finished_sources(
    client: TestClient,
    db: Session,
    make_dataset: Callable[..., dict[str, Any]],
    make_valuation: Callable[..., dict[str, Any]],
    inputs: dict[str, Any],
    tenant_blobs: BlobStore,
) -> None:
    other = make_dataset(4, name="other")
    other_valuation = make_valuation(other)
    finish_valuation(db, other_valuation["id"], scores=[(f"other{i}", 1.0) for i in range(4)])
    foreign = client.post(
        f"/v1/valuations/{other_valuation['id']}/selections", json={"rule": "top_k", "value": 3}
    ).json()
    arms = [{"kind": "selection", "selection_id": foreign["id"]}]
    field, message = _error(client.post("/v1/evaluations", json=_body(inputs, arms=arms)))
    assert field == "body.arms[0]" and f"not the pool {inputs['pool']}" in message

    curation = client.post(
        "/v1/curations",
        json={"dataset_id": inputs["pool"], "pick": {"method": "random"}, "budget": 3},
    ).json()
    arms = [{"kind": "curation", "curation_id": curation["id"]}]
    field, message = _error(client.post("/v1/evaluations", json=_body(inputs, arms=arms)))
    assert field == "body.arms[0]" and "has status 'queued'" in message
    row = db.get(Curation, curation["id"])
    assert row is not None
    row.record_ids, row.job.status = ["pool4", "pool2", "pool0"], JobStatus.succeeded.value
    db.commit()

    score_set = client.post(
        "/v1/score-sets", json={"scorer": "text", "dataset_id": inputs["pool"]}
    ).json()
    set_row = db.get(ScoreSet, score_set["id"])
    assert set_row is not None
    set_row.summary = {"ttr": {"count": 4}}
    set_row.values_blob_key = f"score_sets/{score_set['id']}/values.json"
    job = db.get(Job, set_row.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    db.commit()
    values = {"ttr": [0.5, None, 0.9, 0.5, 0.1]}  # pool1 has no value: never picked
    tenant_blobs.put_bytes(
        set_row.values_blob_key,
        json.dumps({"record_ids": [f"pool{i}" for i in range(5)], "columns": values}).encode(),
    )
    arms = [
        {"kind": "curation", "curation_id": curation["id"]},
        {"kind": "score_set", "score_set_id": score_set["id"], "column": "ttr"},
        {"kind": "score_set", "score_set_id": score_set["id"], "column": "ttr", "order": "asc"},
    ]
    created = client.post("/v1/evaluations", json=_body(inputs, budget=3, arms=arms))
    assert created.status_code == 202, created.text
    stored = db.get(Evaluation, created.json()["id"])
    assert stored is not None
    assert [a["record_ids"] for a in stored.arms] == [
        ["pool4", "pool2", "pool0"],  # pick order
        ["pool2", "pool0", "pool3"],  # highest first, ties by record id
        ["pool4", "pool0", "pool3"],
    ]
    missing_column = [{"kind": "score_set", "score_set_id": score_set["id"], "column": "x"}]
    field, _ = _error(client.post("/v1/evaluations", json=_body(inputs, arms=missing_column)))
    assert field == "body.arms[0].column"


def test_multiple_choice_metric_checks_the_convention(
    client: TestClient,
    make_dataset: Callable[..., dict[str, Any]],
    inputs: dict[str, Any],
) -> None:
    rows = records(3, prefix="mc")
    rows[0]["metadata"] = {"choices": ["a", "b"], "answer": 1}
    rows[1]["metadata"] = {"choices": ["a", "b"], "answer": "b"}
    rows[2]["metadata"] = {"choices": ["a", "b"], "answer": 2}  # out of range
    target = make_dataset(name="mc", recs=rows)
    body = _body(inputs, target_dataset_id=target["id"], metric={"kind": "multiple_choice"})
    field, message = _error(client.post("/v1/evaluations", json=body))
    assert field == "body.target_dataset_id" and message.endswith(": mc2")
    rows[2]["metadata"]["answer"] = 0
    target = make_dataset(name="mc-ok", recs=rows)
    body["target_dataset_id"] = target["id"]
    assert client.post("/v1/evaluations", json=body).status_code == 202


def test_cancel_delete_and_dependents(
    client: TestClient, db: Session, inputs: dict[str, Any]
) -> None:
    evaluation = client.post("/v1/evaluations", json=_body(inputs)).json()
    cancelled = client.post(f"/v1/evaluations/{evaluation['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/evaluations/{evaluation['id']}/cancel").status_code == 409

    conflict = client.delete(f"/v1/datasets/{inputs['target']}")
    assert conflict.status_code == 409
    assert f"evaluation {evaluation['id']} (cancelled)" in conflict.json()["error"]["message"]
    conflict = client.delete(f"/v1/models/{inputs['model']}")
    assert conflict.status_code == 409 and evaluation["id"] in conflict.text
    # the arms copied their records: the selection may go
    assert client.delete(f"/v1/selections/{inputs['selection']}").status_code == 204
    assert client.get(f"/v1/evaluations/{evaluation['id']}").status_code == 200

    assert client.delete(f"/v1/datasets/{inputs['target']}?cascade=true").status_code == 204
    assert client.get(f"/v1/evaluations/{evaluation['id']}").status_code == 404
    assert db.scalar(select(func.count()).select_from(Evaluation)) == 0
    assert client.delete(f"/v1/evaluations/{evaluation['id']}").status_code == 404


def test_a_target_that_is_not_held_out_is_noted(
    client: TestClient, make_dataset: Callable[..., dict[str, Any]], inputs: dict[str, Any]
) -> None:
    leaky = make_dataset(name="leaky", recs=records(2, prefix="pool"))  # pool0, pool1 again
    created = client.post("/v1/evaluations", json=_body(inputs, target_dataset_id=leaky["id"]))
    assert created.status_code == 202, created.text
    assert created.json()["notes"] == [
        "2 of the 2 target records also appear in the pool (the same messages): arms that "
        "train on them are not evaluated on held-out data"
    ]
    clean = client.post("/v1/evaluations", json=_body(inputs)).json()
    assert clean["notes"] == []


def test_one_step_training_is_accepted_without_warmup(
    client: TestClient, inputs: dict[str, Any]
) -> None:
    settings = {"training": {"epochs": 1, "warmup_ratio": 0.0}}
    created = client.post("/v1/evaluations", json=_body(inputs, settings=settings))
    assert created.status_code == 202, created.json()
