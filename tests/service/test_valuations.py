from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import Job, JobStatus, Valuation
from tests.service.conftest import RecordingQueue, finish_valuation, start_running
from workers.contracts import TASK_QUEUES, VALUATION_FEATURIZE, ValuationSettings


def test_create_commits_then_enqueues(
    client: TestClient, db: Session, queue: RecordingQueue, make_valuation: Any
) -> None:
    valuation = make_valuation()
    assert valuation["status"] == "queued"
    assert valuation["method"] == "less"
    assert valuation["progress"] == {"done": 0, "total": 0}
    assert valuation["settings"] == ValuationSettings.model_validate({}).model_dump(mode="json")
    assert valuation["notes"] == [] and valuation["skipped"] == [] and valuation["n_scored"] is None
    assert queue.sent == [(VALUATION_FEATURIZE, {"valuation_id": valuation["id"]})]
    assert VALUATION_FEATURIZE in TASK_QUEUES

    row = db.get(Valuation, valuation["id"])
    assert row is not None and row.job.kind == "valuation" and row.job.status == "queued"
    assert client.get(f"/v1/valuations/{valuation['id']}").json() == valuation


@pytest.mark.parametrize("method", ["tracin", "tracin_adam"])
def test_settings_and_method_are_validated_and_stored(make_valuation: Any, method: str) -> None:
    valuation = make_valuation(
        method=method, settings={"projection": {"dim": 64}, "warmup": {"epochs": 2}}
    )
    assert valuation["method"] == method
    assert valuation["settings"]["projection"]["dim"] == 64
    assert valuation["settings"]["warmup"]["epochs"] == 2
    assert valuation["settings"]["lora"]["r"] is None  # resolved later by the worker


def test_bad_bodies(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: Callable[..., dict[str, Any]],
    model: dict[str, Any],
) -> None:
    ds = make_dataset(2)
    good = {"model_id": model["id"], "pool_dataset_id": ds["id"], "probe_dataset_id": ds["id"]}
    cases = [
        ({**good, "model_id": "nope"}, "body.model_id"),
        ({**good, "pool_dataset_id": "nope"}, "body.pool_dataset_id"),
        ({**good, "probe_dataset_id": "nope"}, "body.probe_dataset_id"),
        ({k: v for k, v in good.items() if k != "model_id"}, "body.model_id"),
        ({**good, "method": "shapley"}, "body.method"),
        ({**good, "settings": {"projection": {"dim": 0}}}, "body.settings.projection.dim"),
        ({**good, "settings": {"warmup": {"fraction": "lots"}}}, "body.settings.warmup.fraction"),
        ({**good, "settings": {"bogus": 1}}, "body.settings.bogus"),
        ({**good, "pool_dataset_id": 5}, "body.pool_dataset_id"),
    ]
    for body, field in cases:
        response = client.post("/v1/valuations", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["field"] == field, response.text
    assert db.scalar(select(func.count()).select_from(Valuation)) == 0
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert queue.sent == []


def test_enqueue_failure_marks_job_failed(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: Callable[..., dict[str, Any]],
    model: dict[str, Any],
) -> None:
    queue.fail_with = ConnectionError("broker down")
    ds = make_dataset(2)
    body = {"model_id": model["id"], "pool_dataset_id": ds["id"], "probe_dataset_id": ds["id"]}
    response = client.post("/v1/valuations", json=body)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    valuation = db.scalars(select(Valuation)).one()
    assert valuation.job.status == "failed"
    assert "broker down" in (valuation.job.error or "")
    assert valuation.job.finished_at is not None
    read = client.get(f"/v1/valuations/{valuation.id}").json()
    assert read["status"] == "failed" and "broker down" in read["error"]


def test_get_reflects_worker_progress(client: TestClient, db: Session, make_valuation: Any) -> None:
    valuation = make_valuation()
    job = db.get(Valuation, valuation["id"]).job  # type: ignore[union-attr]
    job.status, job.stage, job.progress_done, job.progress_total = "running", "warmup", 1, 4
    job.notes = ["reused pool features of dataset x"]
    job.timings = {"load model": 0.5}
    db.commit()
    read = client.get(f"/v1/valuations/{valuation['id']}").json()
    assert read["status"] == "running" and read["stage"] == "warmup"
    assert read["progress"] == {"done": 1, "total": 4}
    assert read["notes"] == ["reused pool features of dataset x"]
    assert read["timings"] == {"load model": 0.5}
    assert read["created_at"].endswith(("+00:00", "Z"))


def test_list_and_unknown(client: TestClient, make_valuation: Any) -> None:
    ids = {make_valuation()["id"] for _ in range(3)}
    page = client.get("/v1/valuations", params={"limit": 2}).json()
    rest = client.get("/v1/valuations", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 3
    assert {v["id"] for v in page["items"] + rest["items"]} == ids
    for path in ("/v1/valuations/nope", "/v1/valuations/nope/scores"):
        assert client.get(path).status_code == 404
    assert client.post("/v1/valuations/nope/cancel").status_code == 404


def test_cancel_queued_is_immediate(client: TestClient, make_valuation: Any) -> None:
    valuation = make_valuation()
    response = client.post(f"/v1/valuations/{valuation['id']}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] is True
    assert body["finished_at"] is not None
    again = client.post(f"/v1/valuations/{valuation['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]


def test_cancel_running_only_requests(client: TestClient, db: Session, make_valuation: Any) -> None:
    valuation = make_valuation()
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    start_running(db, row.job_id)  # a worker runs it and beats
    body = client.post(f"/v1/valuations/{valuation['id']}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    assert body["finished_at"] is None
    db.refresh(row.job)
    assert row.job.cancel_requested is True


def test_cancel_of_a_job_whose_worker_died_ends_it_at_once(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    valuation = make_valuation()
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    start_running(db, row.job_id, beating=False)  # running, but no live delivery
    body = client.post(f"/v1/valuations/{valuation['id']}/cancel").json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None


def test_cancel_finished_conflicts(client: TestClient, db: Session, make_valuation: Any) -> None:
    for status in (JobStatus.succeeded, JobStatus.failed):
        valuation = make_valuation()
        finish_valuation(db, valuation["id"], status=status)
        response = client.post(f"/v1/valuations/{valuation['id']}/cancel")
        assert response.status_code == 409
        assert status.value in response.json()["error"]["message"]


def test_scores_by_rank_paged(client: TestClient, db: Session, make_valuation: Any) -> None:
    valuation = make_valuation()
    scores = [("pool3", 0.9), ("pool0", 0.5), ("pool1", 0.5), ("pool4", 0.1), ("pool2", -1.0)]
    finish_valuation(db, valuation["id"], scores)
    page = client.get(
        f"/v1/valuations/{valuation['id']}/scores", params={"limit": 2, "offset": 1}
    ).json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert page["items"] == [
        {"rank": 1, "record_id": "pool0", "score": 0.5, "per_subtask": {"default": 0.5}},
        {"rank": 2, "record_id": "pool1", "score": 0.5, "per_subtask": {"default": 0.5}},
    ]
    whole = client.get(f"/v1/valuations/{valuation['id']}/scores").json()["items"]
    assert [s["record_id"] for s in whole] == [r for r, _ in scores]
    assert client.get(f"/v1/valuations/{valuation['id']}").json()["n_scored"] == 5


def test_scores_conflict_until_succeeded(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    valuation = make_valuation()
    response = client.get(f"/v1/valuations/{valuation['id']}/scores")
    assert response.status_code == 409
    assert "queued" in response.json()["error"]["message"]
    finish_valuation(db, valuation["id"], status=JobStatus.failed)
    response = client.get(f"/v1/valuations/{valuation['id']}/scores")
    assert response.status_code == 409 and "failed" in response.json()["error"]["message"]


def test_prompt_only_datasets_are_refused_for_loss_based_methods(
    client: TestClient, db: Session, queue: RecordingQueue, model: dict[str, Any]
) -> None:
    def upload(name: str, rows: list[dict[str, Any]]) -> str:
        response = client.post("/v1/datasets", json={"name": name, "records": rows})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    full = upload("full", [{"prompt": "a", "response": "b"}])
    prompts = upload("prompts", [{"prompt": "a", "response": "b"}, {"prompt": "only"}])
    for method in ("less", "tracin", "tracin_adam", "datainf"):
        for field, body in (
            ("body.probe_dataset_id", {"pool_dataset_id": full, "probe_dataset_id": prompts}),
            ("body.pool_dataset_id", {"pool_dataset_id": prompts, "probe_dataset_id": full}),
        ):
            response = client.post(
                "/v1/valuations", json={"model_id": model["id"], "method": method, **body}
            )
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["field"] == field and "1 records without a response" in error["message"]
    assert db.scalar(select(func.count()).select_from(Valuation)) == 0
    assert queue.sent == []


def _dataset(client: TestClient, name: str, rows: list[dict[str, Any]]) -> str:
    response = client.post("/v1/datasets", json={"name": name, "records": rows})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _reward(client: TestClient, name: str, spec: dict[str, Any]) -> str:
    response = client.post("/v1/reward-specs", json={"name": name, "spec": spec})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_nice_needs_a_reward_and_labels_only_when_the_reward_does(
    client: TestClient, db: Session, queue: RecordingQueue, model: dict[str, Any]
) -> None:
    pool = _dataset(client, "pool", [{"prompt": "a", "response": "b"}])
    prompts = _dataset(client, "prompts", [{"prompt": "2+2?"}, {"prompt": "3+3?"}])
    labelled = _dataset(client, "labelled", [{"prompt": "2+2?", "response": "4"}])
    judge = _reward(client, "judge", {"kind": "http_judge", "url": "http://127.0.0.1:9/"})
    exact = _reward(client, "exact", {"kind": "exact_match"})
    base = {"model_id": model["id"], "pool_dataset_id": pool, "method": "nice"}
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "big"}
    cases = [
        ({**base, "probe_dataset_id": prompts}, "body.reward_spec_id", "needs a reward_spec_id"),
        (
            {**base, "probe_dataset_id": prompts, "reward_spec_id": "0" * 32},
            "body.reward_spec_id",
            "does not exist",
        ),
        (
            {**base, "probe_dataset_id": prompts, "reward_spec_id": exact},
            "body.probe_dataset_id",
            "'exact_match' reward",
        ),
        (
            {**base, "method": "less", "probe_dataset_id": labelled, "reward_spec_id": exact},
            "body.reward_spec_id",
            "for methods 'nice' and 'nice_if'",
        ),
        (
            {**base, "method": "datainf", "probe_dataset_id": labelled, "reward_spec_id": exact},
            "body.reward_spec_id",
            "not 'datainf'",
        ),
        (
            {**base, "method": "nice_if", "probe_dataset_id": prompts},
            "body.reward_spec_id",
            "method 'nice_if' needs a reward_spec_id",
        ),
        (
            {
                **base,
                "method": "datainf",
                "probe_dataset_id": labelled,
                "settings": {"datainf": {"damping": 0}},
            },
            "body.settings.datainf.damping",
            "",
        ),
        (
            {
                **base,
                "method": "less",
                "probe_dataset_id": labelled,
                "settings": {"nice": {"assist_endpoint": endpoint}},
            },
            "body.settings.nice.assist_endpoint",
            "is for methods 'nice' and 'nice_if', not 'less'",
        ),
        (
            {
                **base,
                "probe_dataset_id": prompts,
                "reward_spec_id": judge,
                "assist_dataset_id": labelled,
                "settings": {"nice": {"assist_endpoint": endpoint}},
            },
            "body.settings.nice.assist_endpoint",
            "not both",
        ),
        (
            {
                **base,
                "probe_dataset_id": prompts,
                "reward_spec_id": judge,
                "settings": {
                    "nice": {
                        "assist_endpoint": {**endpoint, "api_key_env": "AWS_SECRET_ACCESS_KEY"}
                    }
                },
            },
            "body.settings.nice.assist_endpoint.api_key_env",
            "Extra inputs are not permitted",
        ),
        (
            {
                **base,
                "probe_dataset_id": prompts,
                "reward_spec_id": judge,
                "settings": {"nice": {"assist_endpoint": {**endpoint, "api_key_secret": "nope"}}},
            },
            "body.settings.nice.assist_endpoint.api_key_secret",
            "no secret named 'nope'",
        ),
        (
            {
                **base,
                "probe_dataset_id": prompts,
                "reward_spec_id": judge,
                "settings": {"nice": {"weighting": "greedy"}},
            },
            "body.settings.nice.weighting",
            "",
        ),
    ]
    for body, field, words in cases:
        response = client.post("/v1/valuations", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["field"] == field and words in error["message"], error
    assert db.scalar(select(func.count()).select_from(Valuation)) == 0

    ok = client.post(
        "/v1/valuations", json={**base, "probe_dataset_id": prompts, "reward_spec_id": judge}
    )
    assert ok.status_code == 202, ok.text
    assert ok.json()["reward_spec_id"] == judge and ok.json()["method"] == "nice"
    assert ok.json()["settings"]["nice"]["samples"] == 20  # seed 002 app. C.1 defaults
    ok = client.post(
        "/v1/valuations", json={**base, "probe_dataset_id": labelled, "reward_spec_id": exact}
    )
    assert ok.status_code == 202, ok.text
    nice_if = client.post(
        "/v1/valuations",
        json={**base, "method": "nice_if", "probe_dataset_id": prompts, "reward_spec_id": judge},
    )
    assert nice_if.status_code == 202, nice_if.text
    assert nice_if.json()["settings"]["datainf"] == {
        "damping": 0.1,
        "relative_damping": True,
        "dim_per_layer": None,  # resolved by the worker for the model
    }


def test_samples_endpoint_pages_and_refuses_loss_methods(
    client: TestClient, db: Session, make_valuation: Any, model: dict[str, Any]
) -> None:
    from service.db.models import Sample

    pool = _dataset(client, "pool2", [{"prompt": "a", "response": "b"}])
    prompts = _dataset(client, "prompts2", [{"prompt": "2+2?"}])
    judge = _reward(client, "judge2", {"kind": "http_judge", "url": "http://127.0.0.1:9/"})
    created = client.post(
        "/v1/valuations",
        json={
            "model_id": model["id"],
            "pool_dataset_id": pool,
            "probe_dataset_id": prompts,
            "method": "nice",
            "reward_spec_id": judge,
        },
    ).json()
    for epoch in (2, 1):
        for index in (1, 0):
            db.add(
                Sample(
                    valuation_id=created["id"],
                    epoch=epoch,
                    probe_record_id="p",
                    sample_index=index,
                    text=f"s{epoch}{index}",
                    n_tokens=3,
                    finished=True,
                    reward=float(index),
                )
            )
    db.commit()
    page = client.get(f"/v1/valuations/{created['id']}/samples", params={"limit": 3}).json()
    assert page["total"] == 4
    assert [s["text"] for s in page["items"]] == ["s10", "s11", "s20"]
    loss = make_valuation()
    response = client.get(f"/v1/valuations/{loss['id']}/samples")
    assert response.status_code == 409
    assert client.get("/v1/valuations/" + "0" * 32 + "/samples").status_code == 404


def test_an_assist_endpoint_the_worker_may_not_call_is_refused(
    client: TestClient, queue: RecordingQueue, model: dict[str, Any]
) -> None:
    pool = _dataset(client, "pool", [{"prompt": "a", "response": "b"}])
    prompts = _dataset(client, "prompts", [{"prompt": "2+2?"}])
    judge = _reward(client, "judge", {"kind": "http_judge", "url": "https://judge.example.com/"})
    body = {
        "model_id": model["id"],
        "pool_dataset_id": pool,
        "probe_dataset_id": prompts,
        "method": "nice",
        "reward_spec_id": judge,
    }
    for base_url in ("https://169.254.169.254/v1", "https://[::1]/v1", "http://example.com/v1"):
        endpoint = {"base_url": base_url, "model": "big"}
        response = client.post(
            "/v1/valuations", json={**body, "settings": {"nice": {"assist_endpoint": endpoint}}}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "body.settings.nice.assist_endpoint.base_url"
    assert queue.sent == []


def test_system_prompt_is_validated_and_stored(
    client: TestClient, make_dataset: Callable[..., dict[str, Any]], model: dict[str, Any]
) -> None:
    ds = make_dataset(2)
    good = {"model_id": model["id"], "pool_dataset_id": ds["id"], "probe_dataset_id": ds["id"]}
    for prompt in ("", "You are terse."):
        response = client.post(
            "/v1/valuations", json={**good, "settings": {"system_prompt": prompt}}
        )
        assert response.status_code == 202, response.text
        assert response.json()["settings"]["system_prompt"] == prompt
    bad = client.post("/v1/valuations", json={**good, "settings": {"system_prompt": 3}})
    assert bad.json()["error"]["field"] == "body.settings.system_prompt"


def test_records_cut_whole_and_responses_cut_part_way_are_reported_apart(
    client: TestClient, db: Session, make_valuation: Any
) -> None:
    valuation = make_valuation()
    row = db.get(Valuation, valuation["id"])
    assert row is not None
    gone = {"record_id": "a", "dataset": "pool", "reason": "no response token left"}
    cut = {"record_id": "b", "dataset": "probes", "response_tokens": 90, "response_tokens_kept": 7}
    row.skipped = [gone, {**cut, "cut": "response"}]
    db.commit()
    read = client.get(f"/v1/valuations/{valuation['id']}").json()
    assert read["skipped"] == [gone] and read["truncated"] == [cut]


def test_a_warmup_that_cannot_learn_is_refused_with_the_arithmetic(
    client: TestClient,
    db: Session,
    queue: RecordingQueue,
    make_dataset: Callable[..., dict[str, Any]],
    model: dict[str, Any],
) -> None:
    """20 records x fraction 0.25 = 5 examples in one batch of 8, one epoch: a single step,
    which warmup_ratio > 0 spends at learning rate 0 (tests/engine/test_warmup.py runs the
    scheduler); more steps or no warmup are accepted."""
    pool, probes = make_dataset(20, name="pool"), make_dataset(2, name="probes")
    body = {
        "model_id": model["id"],
        "pool_dataset_id": pool["id"],
        "probe_dataset_id": probes["id"],
    }
    one_step = {"fraction": 0.25, "epochs": 1, "batch_size": 8}
    response = client.post("/v1/valuations", json={**body, "settings": {"warmup": one_step}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "body.settings.warmup.warmup_ratio"
    assert error["message"].startswith(
        "this warmup cannot learn: fraction 0.25 of the pool's 20 records = 5 training "
        "examples, at batch_size 8 1 step per epoch, x 1 epoch = 1 optimizer step; "
        "warmup_ratio 0.03 makes ceil(0.03 x 1) = 1 warmup step, taken at learning rate 0"
    )
    assert db.scalar(select(func.count()).select_from(Valuation)) == 0 and queue.sent == []
    for fixed in (
        {"warmup_ratio": 0.0},
        {"epochs": 2},
        {"batch_size": 4},
        {"fraction": 0.45},  # 9 examples: 2 batches of 8
    ):
        settings = {"warmup": {**one_step, **fixed}}
        response = client.post("/v1/valuations", json={**body, "settings": settings})
        assert response.status_code == 202, (fixed, response.text)


def test_a_warmup_held_out_set_is_validated_and_stored(
    client: TestClient, db: Session, queue: RecordingQueue, model: dict[str, Any]
) -> None:
    full = _dataset(client, "full", [{"prompt": "a", "response": "b"}])
    prompts = _dataset(client, "prompts", [{"prompt": "a", "response": "b"}, {"prompt": "only"}])
    good = {"model_id": model["id"], "pool_dataset_id": full, "probe_dataset_id": full}
    for value, status, message in (
        ("nope", 422, "dataset nope does not exist"),
        (prompts, 422, "1 records without a response"),
        (5, 422, "string"),
    ):
        response = client.post("/v1/valuations", json={**good, "warmup_eval_dataset_id": value})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["field"] == "body.warmup_eval_dataset_id", error
        assert message in error["message"], error
    assert db.scalar(select(func.count()).select_from(Valuation)) == 0
    assert db.scalar(select(func.count()).select_from(Job)) == 0
    assert queue.sent == []

    response = client.post("/v1/valuations", json={**good, "warmup_eval_dataset_id": full})
    assert response.status_code == 202, response.text
    valuation = response.json()
    assert valuation["warmup_eval_dataset_id"] == full
    row = db.get(Valuation, valuation["id"])
    assert row is not None and row.warmup_eval_dataset_id == full
    assert client.get(f"/v1/valuations/{valuation['id']}").json() == valuation
    without = client.post("/v1/valuations", json=good).json()
    assert without["warmup_eval_dataset_id"] is None
