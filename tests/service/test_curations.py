"""The curations API: every reference in a recipe is checked before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Curation, Job, JobStatus, ScoreSet
from tests.service.conftest import RecordingQueue
from workers.contracts import CURATION_RUN, TASK_QUEUES


def _score_set(client: TestClient, db: Session, dataset_id: str, *, succeeded: bool = True) -> str:
    response = client.post("/v1/score-sets", json={"scorer": "text", "dataset_id": dataset_id})
    assert response.status_code == 202, response.text
    score_set_id = str(response.json()["id"])
    if succeeded:
        row = db.get(ScoreSet, score_set_id)
        assert row is not None
        row.summary = {"mtld": {"count": 3}, "ttr": {"count": 3}}
        row.values_blob_key = f"score_sets/{score_set_id}/values.json"
        job = db.get(Job, row.job_id)
        assert job is not None
        job.status = JobStatus.succeeded.value
        db.commit()
    return score_set_id


@pytest.fixture()
def inputs(
    client: TestClient, db: Session, make_dataset: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    pool = make_dataset(3, name="pool")
    return {"pool": pool["id"], "set": _score_set(client, db, pool["id"])}


def _body(inputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "dataset_id": inputs["pool"],
        "filters": [{"score_set_id": inputs["set"], "column": "ttr", "min_percentile": 10}],
        "pick": {"method": "rank", "by": {"score_set_id": inputs["set"], "column": "mtld"}},
        "budget": 2,
        **changes,
    }


def test_create_commits_then_enqueues(
    client: TestClient, db: Session, queue: RecordingQueue, inputs: dict[str, Any]
) -> None:
    response = client.post("/v1/curations", json=_body(inputs, quota={"max_per_group": 1}))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["record_ids"] is None
    assert body["recipe"]["quota"] == {"by": "subtask", "max_per_group": 1}
    assert queue.sent[-1] == (CURATION_RUN, {"curation_id": body["id"]})
    assert TASK_QUEUES[CURATION_RUN] == "sift.gpu"
    assert client.get(f"/v1/curations/{body['id']}").json()["id"] == body["id"]
    assert client.get(f"/v1/curations/{body['id']}/export").status_code == 409
    row = db.get(Curation, body["id"])
    assert row is not None and row.job.kind == "curation"
    response = client.delete(f"/v1/datasets/{inputs['pool']}")
    assert response.status_code == 409  # used by the score set (and the curation)


def test_bad_recipes_are_refused_naming_the_field(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    inputs: dict[str, Any],
    make_dataset: Callable[..., dict[str, Any]],
    model: dict[str, Any],
) -> None:
    other = make_dataset(2, name="other")
    cases: list[tuple[dict[str, Any], str, str]] = [
        (_body(inputs, dataset_id="nope"), "body.dataset_id", "does not exist"),
        (_body(inputs, budget=None), "body.budget", "exactly one"),
        (_body(inputs, budget_fraction=0.5), "body.budget", "exactly one"),
        (
            _body(inputs, filters=[{"score_set_id": inputs["set"], "column": "ttr"}]),
            "body.filters[0]",
            "needs min",
        ),
        (
            _body(inputs, filters=[{"score_set_id": inputs["set"], "column": "x", "min": 1}]),
            "body.filters[0].score_set_id",
            "no column 'x'",
        ),
        (
            _body(
                inputs,
                filters=[{"score_set_id": inputs["set"], "column": "ttr", "min": 2, "max": 1}],
            ),
            "body.filters[0]",
            "below max",
        ),
        (
            _body(
                inputs, pick={"method": "rank", "by": {"score_set_id": "nope", "column": "mtld"}}
            ),
            "body.pick.by.score_set_id",
            "does not exist",
        ),
        (
            _body(
                inputs,
                pick={
                    "method": "deita",
                    "score": {"score_set_id": _score_set(client, db, other["id"]), "column": "ttr"},
                },
            ),
            "body.pick.score.score_set_id",
            f"not {inputs['pool']}",
        ),
        (
            _body(
                inputs,
                pick={
                    "method": "rank",
                    "by": {
                        "score_set_id": _score_set(client, db, inputs["pool"], succeeded=False),
                        "column": "ttr",
                    },
                },
            ),
            "body.pick.by.score_set_id",
            "'queued'",
        ),
        (
            _body(inputs, pick={"method": "k_center"}, settings={"embedding": "lm"}),
            "body.model_id",
            "needs a model_id",
        ),
        (_body(inputs, model_id=model["id"]), "body.model_id", "used only by"),
    ]
    queue.sent.clear()
    before = db.scalar(select(func.count()).select_from(Curation))
    for body, field, phrase in cases:
        response = client.post("/v1/curations", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["field"] == field and phrase in error["message"], error
    assert db.scalar(select(func.count()).select_from(Curation)) == before
    assert queue.sent == []
    for schema_error in (
        _body(inputs, pick={"method": "best"}),
        _body(inputs, quota={"by": "source", "max_per_group": 1}),
        _body(inputs, budget=0),
    ):
        assert client.post("/v1/curations", json=schema_error).status_code == 422


def test_export_streams_the_selection_in_pick_order(
    client: TestClient, db: Session, inputs: dict[str, Any]
) -> None:
    curation_id = client.post("/v1/curations", json=_body(inputs)).json()["id"]
    row = db.get(Curation, curation_id)
    assert row is not None
    row.record_ids, row.n_selected, row.stats = ["pool2", "pool0"], 2, {"records": 3}
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    db.commit()
    body = client.get(f"/v1/curations/{curation_id}").json()
    assert body["record_ids"] == ["pool2", "pool0"] and body["n_selected"] == 2
    lines = client.get(f"/v1/curations/{curation_id}/export").text.splitlines()
    assert [line.split('"id": "')[1].split('"')[0] for line in lines] == ["pool2", "pool0"]
    assert client.post(f"/v1/curations/{curation_id}/cancel").status_code == 409
