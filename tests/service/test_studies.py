"""The studies API: pairing checks before anything is written, then the job's life cycle."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.db.base import utcnow
from service.db.models import Checkpoint, Job, JobStatus, Study, WarmupRun
from tests.service.conftest import RecordingQueue
from workers.contracts import STUDY_RUN, TASK_QUEUES, StudySettings


def _paired(prefix: str, pairs: list[Any], key: str = "pair") -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i}",
            "prompt": f"{prefix} question {i}?",
            "response": f"{prefix} answer {i}",
            "metadata": {key: pair},
        }
        for i, pair in enumerate(pairs)
    ]


def _dataset(client: TestClient, name: str, rows: list[dict[str, Any]]) -> str:
    response = client.post("/v1/datasets", json={"name": name, "records": rows})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run(db: Session, model_id: str, *, status: str = "complete", n_checkpoints: int = 2) -> str:
    run = WarmupRun(
        content_key=f"test-{utcnow().timestamp()}-{status}-{n_checkpoints}",
        origin="upload",
        model_id=model_id,
        settings={"lora": {"r": 8, "alpha": 32.0, "dropout": 0.0, "target_modules": ["q_proj"]}},
        status=status,
    )
    db.add(run)
    db.flush()
    for epoch in range(1, n_checkpoints + 1):
        db.add(
            Checkpoint(
                warmup_run_id=run.id,
                epoch=epoch,
                step=10 * epoch,
                mean_lr=1e-4,
                adapter_blob_key=f"uploads/{run.id}/step-{epoch}.safetensors",
                optimizer_blob_key=None,
                content_hash="0" * 64,
            )
        )
    db.commit()
    return run.id


@pytest.fixture()
def study_inputs(client: TestClient, db: Session, model: dict[str, Any]) -> dict[str, Any]:
    pairs = ["q1", "q2", 3]
    return {
        "warmup_run_id": _run(db, model["id"]),
        "eval_dataset_id": _dataset(client, "eval", _paired("e", pairs)),
        "probe_sets": [
            {"name": "non-CoT", "dataset_id": _dataset(client, "plain", _paired("p", pairs))},
            {"name": "CoT", "dataset_id": _dataset(client, "cot", _paired("c", pairs[::-1]))},
        ],
        "reference": "non-CoT",
    }


def _nothing_written(db: Session, queue: RecordingQueue) -> None:
    assert db.scalar(select(func.count()).select_from(Study)) == 0
    assert queue.sent == []


def test_create_commits_then_enqueues_on_the_gpu_queue(
    client: TestClient, db: Session, queue: RecordingQueue, study_inputs: dict[str, Any]
) -> None:
    response = client.post("/v1/studies", json={"name": "CoT?", **study_inputs})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["result"] is None and body["plots"] is None
    assert [p["name"] for p in body["probe_sets"]] == ["non-CoT", "CoT"]
    assert body["settings"] == StudySettings().model_dump(mode="json")
    assert queue.sent == [(STUDY_RUN, {"study_id": body["id"]})]
    assert TASK_QUEUES[STUDY_RUN] == "sift.gpu"
    study = db.get(Study, body["id"])
    assert study is not None and study.job.kind == "study"
    assert client.get(f"/v1/studies/{body['id']}").json()["id"] == body["id"]
    assert client.get("/v1/studies").json()["total"] == 1


def _with(inputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**inputs, **changes}


def test_malformed_pairings_are_refused_naming_the_problem(
    client: TestClient, db: Session, queue: RecordingQueue, study_inputs: dict[str, Any]
) -> None:
    def refused(body: dict[str, Any], field: str, *phrases: str) -> None:
        response = client.post("/v1/studies", json=body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["field"] == field, error
        for phrase in phrases:
            assert phrase in error["message"], error["message"]
        _nothing_written(db, queue)

    def only(dataset_id: str) -> dict[str, Any]:
        probe_sets = [{"name": "A", "dataset_id": dataset_id}]
        return _with(study_inputs, probe_sets=probe_sets, reference=None)

    probe = study_inputs["probe_sets"][0]
    missing_key = _paired("m", ["q1", "q2", "3"])
    missing_key[1]["metadata"] = {"other": "q2"}
    refused(
        only(_dataset(client, "mk", missing_key)),
        "body.probe_sets[0].dataset_id",
        "'m1'",
        "no metadata.pair",
    )
    duplicate = _paired("d", ["q1", "q2", "q2"])
    refused(
        only(_dataset(client, "dup", duplicate)),
        "body.probe_sets[0].dataset_id",
        "'q2'",
        "more than once",
    )
    other = _paired("o", ["q1", "q2", "q9"])
    refused(
        only(_dataset(client, "oth", other)),
        "body.probe_sets[0].dataset_id",
        "missing '3'",
        "not in the evaluation set: 'q9'",
    )
    single = _dataset(client, "one", _paired("s", ["q1"]))
    refused(
        {**only(single), "eval_dataset_id": single},
        "body.eval_dataset_id",
        "at least 2",
    )
    refused(
        _with(study_inputs, probe_sets=[probe, {**probe}]),
        "body.probe_sets",
        "repeated: 'non-CoT'",
    )
    refused(_with(study_inputs, reference="CoT-2"), "body.reference", "'CoT-2'")
    refused(_with(study_inputs, pair_key="nope"), "body.eval_dataset_id", "metadata.nope")
    prompt_only = [{"id": "x", "prompt": "q?", "metadata": {"pair": "q1"}}]
    refused(
        _with(study_inputs, eval_dataset_id=_dataset(client, "po", prompt_only)),
        "body.eval_dataset_id",
        "without a response",
    )
    refused(_with(study_inputs, eval_dataset_id="nope"), "body.eval_dataset_id", "does not exist")
    refused(_with(study_inputs, warmup_run_id="nope"), "body.warmup_run_id", "does not exist")


def test_checkpoints_must_be_complete(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    model: dict[str, Any],
    study_inputs: dict[str, Any],
) -> None:
    for run_id, phrase in (
        (_run(db, model["id"], status="running"), "still 'running'"),
        (_run(db, model["id"], n_checkpoints=0), "no checkpoints"),
    ):
        response = client.post("/v1/studies", json=_with(study_inputs, warmup_run_id=run_id))
        assert response.status_code == 422
        assert phrase in response.json()["error"]["message"]
        _nothing_written(db, queue)


def test_schema_errors(client: TestClient, study_inputs: dict[str, Any]) -> None:
    for body in (
        _with(study_inputs, probe_sets=[]),
        _with(study_inputs, settings={"bootstrap": 0}),
        _with(study_inputs, settings={"confidence": 1.0}),
        _with(study_inputs, probe_sets=[{"name": "", "dataset_id": "x"}]),
        _with(study_inputs, surprise=1),
    ):
        assert client.post("/v1/studies", json=body).status_code == 422


def test_plots_conflict_until_succeeded_then_are_served(
    client: TestClient, db: Session, tenant_blobs: BlobStore, study_inputs: dict[str, Any]
) -> None:
    study_id = client.post("/v1/studies", json=study_inputs).json()["id"]
    for fmt in ("png", "svg"):
        response = client.get(f"/v1/studies/{study_id}/plot.{fmt}")
        assert response.status_code == 409 and "succeeded" in response.json()["error"]["message"]
    assert client.get(f"/v1/studies/{study_id}/plot.pdf").status_code == 422
    study = db.get(Study, study_id)
    assert study is not None
    tenant_blobs.put_bytes("studies/x/plot.png", b"\x89PNG fake")
    tenant_blobs.put_bytes("studies/x/plot.svg", b"<svg/>")
    study.plot_png_key, study.plot_svg_key = "studies/x/plot.png", "studies/x/plot.svg"
    study.result = {"steps": [10, 20]}
    job = db.get(Job, study.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    db.commit()
    body = client.get(f"/v1/studies/{study_id}").json()
    assert body["result"] == {"steps": [10, 20]}
    assert body["plots"] == {
        "png": f"/v1/studies/{study_id}/plot.png",
        "svg": f"/v1/studies/{study_id}/plot.svg",
    }
    png = client.get(body["plots"]["png"])
    assert png.headers["content-type"] == "image/png" and png.content == b"\x89PNG fake"
    assert client.get(body["plots"]["svg"]).headers["content-type"] == "image/svg+xml"
    assert client.get("/v1/studies/nope/plot.png").status_code == 404


def test_cancel_and_enqueue_failure(
    client: TestClient, queue: RecordingQueue, study_inputs: dict[str, Any]
) -> None:
    study_id = client.post("/v1/studies", json=study_inputs).json()["id"]
    assert client.post(f"/v1/studies/{study_id}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/studies/{study_id}/cancel").status_code == 409
    queue.fail_with = ConnectionError("broker down")
    response = client.post("/v1/studies", json=study_inputs)
    assert response.status_code == 503
    failed = client.get("/v1/studies").json()["items"][0]
    assert failed["status"] == "failed" and "broker down" in failed["error"]


def test_datasets_of_a_study_cannot_be_deleted(
    client: TestClient, study_inputs: dict[str, Any]
) -> None:
    study_id = client.post("/v1/studies", json=study_inputs).json()["id"]
    for dataset_id in (
        study_inputs["eval_dataset_id"],
        study_inputs["probe_sets"][1]["dataset_id"],
    ):
        response = client.delete(f"/v1/datasets/{dataset_id}")
        assert response.status_code == 409
        assert study_id in response.json()["error"]["message"]


def test_probe_queries_wrap_reference_examples(client: TestClient) -> None:
    response = client.post(
        "/v1/studies/probe-queries",
        json={
            "strategy": "evaluate",
            "examples": [{"query": "2+2?", "response": "4", "pair": "q1"}],
        },
    )
    assert response.status_code == 200, response.text
    (query,) = response.json()["queries"]
    assert query["pair"] == "q1"
    assert "[Input]: 2+2? [Output]: 4" in query["query"]
    cot = client.post(
        "/v1/studies/probe-queries", json={"strategy": "cot", "examples": [{"query": "2+2?"}]}
    ).json()
    assert cot["queries"][0]["query"].startswith("2+2? Please output the reason first")
    missing = client.post(
        "/v1/studies/probe-queries", json={"strategy": "evaluate", "examples": [{"query": "q"}]}
    )
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "body.examples[0].response"
    unknown = client.post(
        "/v1/studies/probe-queries", json={"strategy": "rephrase", "examples": [{"query": "q"}]}
    )
    assert unknown.status_code == 422
