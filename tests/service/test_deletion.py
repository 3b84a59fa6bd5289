"""DELETE for every resource: what goes with it, what blocks it (a 409 naming the dependents,
``?cascade=true`` as the way out), a live job cancelled by its deletion, and the content-keyed
caches (feature sets, Sift-trained warmup runs) collected once nothing references them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.db.models import (
    Checkpoint,
    Curation,
    Dataset,
    FeatureSet,
    Job,
    JobStatus,
    Model,
    Record,
    Sample,
    Score,
    ScoreSet,
    Selection,
    TaskDelivery,
    Valuation,
    WarmupRun,
)
from tests.service.conftest import finish_valuation, records
from tests.service.test_warmup_runs import adapter, upload

Maker = Callable[..., dict[str, Any]]


def _count(db: Session, table: Any, *where: Any) -> int:
    return db.scalar(select(func.count()).select_from(table).where(*where)) or 0


def _conflict(response: Any) -> str:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "conflict"
    assert "?cascade=true" in error["message"]
    return str(error["message"])


def _finish_job(db: Session, table: Any, resource_id: str, status: JobStatus) -> None:
    row = db.get(table, resource_id)
    assert row is not None
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status = status.value
    db.commit()


def trained_run(
    db: Session, blobs: BlobStore, valuation_id: str, *, key: str | None = None
) -> dict[str, Any]:
    """What a valuation's worker leaves: a warmup run (or the one with ``key``, reused), two
    checkpoints with files, and pool and probe features at each, with their shards."""
    valuation = db.get(Valuation, valuation_id)
    assert valuation is not None
    key = key or uuid.uuid4().hex
    run = db.scalar(select(WarmupRun).where(WarmupRun.content_key == key))
    if run is None:
        run = WarmupRun(
            tenant_id=valuation.tenant_id,
            content_key=key,
            origin="warmup",
            model_id=valuation.model_id,
            pool_dataset_id=valuation.pool_dataset_id,
            settings={"lora": {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": []}},
            status="complete",
        )
        db.add(run)
        db.flush()
        for epoch in (1, 2):
            prefix = f"warmup/{key}/epoch-{epoch:03d}"
            for name in ("adapter", "optimizer"):
                blobs.put_bytes(f"{prefix}/{name}.safetensors", b"x")
            db.add(
                Checkpoint(
                    tenant_id=run.tenant_id,
                    warmup_run_id=run.id,
                    epoch=epoch,
                    step=epoch,
                    mean_lr=1e-3,
                    adapter_blob_key=f"{prefix}/adapter.safetensors",
                    optimizer_blob_key=f"{prefix}/optimizer.safetensors",
                    content_hash=f"{key}-{epoch}",
                )
            )
        db.flush()
    checkpoints = db.scalars(select(Checkpoint).where(Checkpoint.warmup_run_id == run.id)).all()
    feature_sets = []
    for dataset_id, kind in (
        (valuation.pool_dataset_id, "adam"),
        (valuation.probe_dataset_id, "sgd"),
    ):
        dataset = db.get(Dataset, dataset_id)
        assert dataset is not None
        for ckpt in checkpoints:
            feature_key = f"{kind}-{dataset.content_hash[:16]}-{ckpt.id}"
            row = db.scalar(select(FeatureSet).where(FeatureSet.content_key == feature_key))
            if row is None:
                row = FeatureSet(
                    tenant_id=run.tenant_id,
                    content_key=feature_key,
                    dataset_id=dataset_id,
                    checkpoint_id=ckpt.id,
                    kind=kind,
                    provenance={},
                    dim=8,
                    dtype="float16",
                    n_records=dataset.n_records,
                    shard_size=dataset.n_records,
                    n_shards=1,
                    blob_prefix=f"features/{feature_key}",
                    status="complete",
                )
                db.add(row)
                blobs.put_bytes(f"features/{feature_key}/shard-00000.safetensors", b"f")
            feature_sets.append(row)
    valuation.warmup_run_id = run.id
    db.commit()
    return {"run": run.id, "key": key, "feature_sets": [f.id for f in feature_sets]}


@pytest.fixture()
def made(
    client: TestClient, db: Session, tenant_blobs: BlobStore, make_valuation: Maker
) -> dict[str, Any]:
    """A succeeded valuation with scores, a selection, samples, a score file, a task row and
    its warmup run and features, as the worker leaves them."""
    valuation = make_valuation()
    pool = valuation["pool_dataset_id"]
    finish_valuation(db, valuation["id"], scores=[(f"pool{i}", 1.0 - i) for i in range(5)])
    selection = client.post(
        f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": 2}
    ).json()
    db.add(
        Sample(
            valuation_id=valuation["id"],
            epoch=1,
            probe_record_id="probe0",
            sample_index=0,
            text="t",
            n_tokens=1,
            finished=True,
            reward=1.0,
        )
    )
    db.add(
        TaskDelivery(
            task_id=uuid.uuid4().hex, job_id=valuation["job_id"], task_name="t", deliveries=0
        )
    )
    db.commit()
    tenant_blobs.put_bytes(f"scores/{valuation['id']}.jsonl", b"{}\n")
    cache = trained_run(db, tenant_blobs, valuation["id"])
    return {"valuation": valuation, "pool": pool, "selection": selection, **cache}


def test_deleting_a_valuation_removes_its_rows_and_files_and_collects_its_caches(
    client: TestClient, db: Session, tenant_blobs: BlobStore, made: dict[str, Any]
) -> None:
    valuation_id, job_id = made["valuation"]["id"], made["valuation"]["job_id"]
    assert tenant_blobs.list_keys(f"warmup/{made['key']}/")
    response = client.delete(f"/v1/valuations/{valuation_id}")
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"/v1/valuations/{valuation_id}").status_code == 404
    assert client.get(f"/v1/selections/{made['selection']['id']}").status_code == 404
    for table, where in (
        (Valuation, Valuation.id == valuation_id),
        (Job, Job.id == job_id),
        (TaskDelivery, TaskDelivery.job_id == job_id),
        (Score, Score.valuation_id == valuation_id),
        (Sample, Sample.valuation_id == valuation_id),
        (Selection, Selection.valuation_id == valuation_id),
        (WarmupRun, WarmupRun.id == made["run"]),
        (Checkpoint, Checkpoint.warmup_run_id == made["run"]),
        (FeatureSet, FeatureSet.id.in_(made["feature_sets"])),
    ):
        assert _count(db, table, where) == 0, table
    assert tenant_blobs.list_keys() == []  # score file, checkpoints, feature shards
    # nothing depends on the pool any more
    assert client.delete(f"/v1/datasets/{made['pool']}").status_code == 204
    assert client.delete(f"/v1/valuations/{valuation_id}").status_code == 404


def test_shared_caches_stay_while_another_valuation_uses_them(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    made: dict[str, Any],
    make_valuation: Maker,
    make_dataset: Maker,
) -> None:
    """A second valuation of an identical pool upload reuses the run and the pool features;
    deleting the first valuation and then its pool keeps them, moved onto the second pool."""
    twin = make_dataset(5, name="pool")  # same records as the first pool: same content hash
    other_probes = make_dataset(3, name="other")
    second = client.post(
        "/v1/valuations",
        json={
            "model_id": made["valuation"]["model_id"],
            "pool_dataset_id": twin["id"],
            "probe_dataset_id": other_probes["id"],
        },
    ).json()
    finish_valuation(db, second["id"], scores=[])
    reused = trained_run(db, tenant_blobs, second["id"], key=made["key"])
    assert reused["run"] == made["run"]
    pool_features = set(made["feature_sets"]) & set(reused["feature_sets"])
    assert len(pool_features) == 2  # the pool's, at both checkpoints
    assert client.delete(f"/v1/valuations/{made['valuation']['id']}").status_code == 204
    assert client.delete(f"/v1/datasets/{made['pool']}").status_code == 204

    run = db.get(WarmupRun, made["run"])
    assert run is not None and run.pool_dataset_id == twin["id"]  # moved to the twin
    kept = db.scalars(
        select(FeatureSet).where(
            FeatureSet.checkpoint_id.in_(
                select(Checkpoint.id).where(Checkpoint.warmup_run_id == run.id)
            )
        )
    ).all()
    assert {f.id for f in kept} == set(reused["feature_sets"])
    assert {f.dataset_id for f in kept if f.id in pool_features} == {twin["id"]}
    gone = set(made["feature_sets"]) - set(reused["feature_sets"])  # the first probes'
    assert len(gone) == 2 and _count(db, FeatureSet, FeatureSet.id.in_(gone)) == 0
    keys = tenant_blobs.list_keys()
    assert any(k.startswith(f"warmup/{made['key']}/") for k in keys)
    assert all(any(k.startswith(f"{f.blob_prefix}/") for k in keys) for f in kept)
    # the last user goes: everything goes
    assert client.delete(f"/v1/valuations/{second['id']}").status_code == 204
    assert _count(db, WarmupRun) == _count(db, FeatureSet) == 0
    assert tenant_blobs.list_keys() == []


def test_a_dataset_after_a_failed_valuation(
    client: TestClient, db: Session, make_valuation: Maker
) -> None:
    """The issue's case: a failed valuation no longer blocks its dataset for ever; the 409
    names it and says how to get out."""
    valuation = make_valuation()
    finish_valuation(db, valuation["id"], status=JobStatus.failed)
    message = _conflict(client.delete(f"/v1/datasets/{valuation['pool_dataset_id']}"))
    assert f"valuation {valuation['id']} (failed)" in message
    assert client.delete(f"/v1/valuations/{valuation['id']}").status_code == 204
    assert client.delete(f"/v1/datasets/{valuation['pool_dataset_id']}").status_code == 204
    assert _count(db, Record, Record.dataset_id == valuation["pool_dataset_id"]) == 0


def test_cascade_deletes_a_datasets_dependents_and_cancels_live_ones(
    client: TestClient, db: Session, queue: Any, make_valuation: Maker
) -> None:
    running = make_valuation()
    pool = running["pool_dataset_id"]
    _finish_job(db, Valuation, running["id"], JobStatus.running)
    score_set = client.post("/v1/score-sets", json={"scorer": "text", "dataset_id": pool}).json()
    _finish_job(db, ScoreSet, score_set["id"], JobStatus.succeeded)
    db.get(ScoreSet, score_set["id"]).summary = {"ttr": {}}  # type: ignore[union-attr]
    db.commit()
    curation = client.post(
        "/v1/curations",
        json={
            "dataset_id": pool,
            "pick": {"method": "rank", "by": {"score_set_id": score_set["id"], "column": "ttr"}},
            "budget": 1,
        },
    ).json()
    message = _conflict(client.delete(f"/v1/datasets/{pool}"))
    for part in (
        f"valuation {running['id']} (running)",
        f"score set {score_set['id']} (succeeded)",
        f"curation {curation['id']} (queued)",
    ):
        assert part in message, message
    assert client.get(f"/v1/valuations/{running['id']}").status_code == 200  # nothing deleted

    response = client.delete(f"/v1/datasets/{pool}", params={"cascade": "true"})
    assert response.status_code == 204, response.text
    for path in (
        f"/v1/datasets/{pool}",
        f"/v1/valuations/{running['id']}",
        f"/v1/score-sets/{score_set['id']}",
        f"/v1/curations/{curation['id']}",
    ):
        assert client.get(path).status_code == 404, path
    assert _count(db, Job, Job.id == running["job_id"]) == 0  # its worker drops the job
    # the probe set was not the pool: it stays
    assert client.get(f"/v1/datasets/{running['probe_dataset_id']}").status_code == 200


def test_a_warmup_held_out_set_is_a_dependent_of_its_valuations(
    client: TestClient, db: Session, make_dataset: Maker, make_valuation: Maker
) -> None:
    heldout = make_dataset(2, name="heldout")
    valuation = make_valuation(warmup_eval_dataset_id=heldout["id"])
    finish_valuation(db, valuation["id"])
    message = _conflict(client.delete(f"/v1/datasets/{heldout['id']}"))
    assert f"valuation {valuation['id']} (succeeded)" in message, message
    assert client.get(f"/v1/datasets/{heldout['id']}").status_code == 200

    response = client.delete(f"/v1/datasets/{heldout['id']}", params={"cascade": "true"})
    assert response.status_code == 204, response.text
    assert client.get(f"/v1/valuations/{valuation['id']}").status_code == 404
    assert client.get(f"/v1/datasets/{valuation['pool_dataset_id']}").status_code == 200


def test_a_live_valuation_is_cancelled_by_its_deletion(
    client: TestClient, db: Session, make_valuation: Maker
) -> None:
    for status in (JobStatus.queued, JobStatus.running):
        valuation = make_valuation()
        if status == JobStatus.running:
            _finish_job(db, Valuation, valuation["id"], status)
        assert client.delete(f"/v1/valuations/{valuation['id']}").status_code == 204
        assert _count(db, Job, Job.id == valuation["job_id"]) == 0
        assert _count(db, Valuation, Valuation.id == valuation["id"]) == 0


def test_score_set_blocked_by_curations_that_name_it(
    client: TestClient, db: Session, tenant_blobs: BlobStore, make_dataset: Maker
) -> None:
    ds = make_dataset(4, name="d")
    score_set = client.post(
        "/v1/score-sets", json={"scorer": "text", "dataset_id": ds["id"]}
    ).json()
    _finish_job(db, ScoreSet, score_set["id"], JobStatus.succeeded)
    row = db.get(ScoreSet, score_set["id"])
    assert row is not None
    row.summary = {"ttr": {}}
    row.values_blob_key = f"score_sets/{row.id}/values.json"
    db.commit()
    tenant_blobs.put_bytes(f"score_sets/{row.id}/values.json", b"{}")
    tenant_blobs.put_bytes(f"score_sets/{row.id}/hist-ttr.png", b"png")
    filtered = client.post(
        "/v1/curations",
        json={
            "dataset_id": ds["id"],
            "filters": [{"score_set_id": row.id, "column": "ttr", "min": 0.0}],
            "pick": {"method": "random"},
            "budget": 1,
        },
    ).json()
    _finish_job(db, Curation, filtered["id"], JobStatus.succeeded)
    other = client.post(
        "/v1/curations", json={"dataset_id": ds["id"], "pick": {"method": "random"}, "budget": 1}
    ).json()
    message = _conflict(client.delete(f"/v1/score-sets/{row.id}"))
    assert f"curation {filtered['id']} (succeeded)" in message and other["id"] not in message
    assert client.delete(f"/v1/curations/{filtered['id']}").status_code == 204
    assert client.delete(f"/v1/score-sets/{row.id}").status_code == 204
    assert tenant_blobs.list_keys("score_sets/") == []
    assert client.get(f"/v1/curations/{other['id']}").status_code == 200


def _paired(prefix: str, n: int = 3) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "prompt": f"{prefix} q{i}", "response": "a", "metadata": {"pair": i}}
        for i in range(n)
    ]


def test_study_and_uploaded_run(
    client: TestClient, db: Session, tenant_blobs: BlobStore, model: dict[str, Any]
) -> None:
    run = upload(client, model["id"], [adapter(0), adapter(1)]).json()
    ev = client.post("/v1/datasets", json={"name": "ev", "records": _paired("e")}).json()
    probe = client.post("/v1/datasets", json={"name": "pr", "records": _paired("p")}).json()
    study = client.post(
        "/v1/studies",
        json={
            "warmup_run_id": run["id"],
            "eval_dataset_id": ev["id"],
            "probe_sets": [{"name": "p", "dataset_id": probe["id"]}],
        },
    ).json()
    tenant_blobs.put_bytes(f"studies/{study['id']}/plot.png", b"png")
    checkpoints = db.scalars(select(Checkpoint).where(Checkpoint.warmup_run_id == run["id"])).all()
    for ckpt in checkpoints:  # the study's stored gradients
        db.add(
            FeatureSet(
                content_key=f"s-{ckpt.id}",
                dataset_id=ev["id"],
                checkpoint_id=ckpt.id,
                kind="sgd_sum",
                provenance={},
                dim=8,
                dtype="float32",
                n_records=3,
                shard_size=3,
                n_shards=1,
                blob_prefix=f"features/s-{ckpt.id}",
                status="complete",
            )
        )
        tenant_blobs.put_bytes(f"features/s-{ckpt.id}/shard-00000.safetensors", b"f")
    db.commit()
    message = _conflict(client.delete(f"/v1/warmup-runs/{run['id']}"))
    assert f"study {study['id']} (queued)" in message
    assert _conflict(client.delete(f"/v1/models/{model['id']}"))

    assert client.delete(f"/v1/studies/{study['id']}").status_code == 204
    assert _count(db, FeatureSet) == 0  # its gradients: nothing else reads them
    assert not tenant_blobs.list_keys("features/") and not tenant_blobs.list_keys("studies/")
    assert client.get(f"/v1/warmup-runs/{run['id']}").status_code == 200  # uploads stay
    assert tenant_blobs.list_keys(f"uploads/{run['id']}/")
    assert client.delete(f"/v1/warmup-runs/{run['id']}").status_code == 204
    assert tenant_blobs.list_keys() == [] and _count(db, Checkpoint) == 0
    assert client.delete(f"/v1/datasets/{ev['id']}").status_code == 204


def test_a_live_valuation_that_may_reuse_a_run_protects_it(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    made: dict[str, Any],
    make_valuation: Maker,
    make_dataset: Maker,
) -> None:
    """Its worker may have found the run by content key without recording it yet: the run is
    neither collected nor deletable without cascade."""
    twin = make_dataset(5, name="pool")
    live = make_valuation(pool=twin)
    _finish_job(db, Valuation, live["id"], JobStatus.running)
    message = _conflict(client.delete(f"/v1/warmup-runs/{made['run']}"))
    assert f"valuation {made['valuation']['id']} (succeeded)" in message
    assert f"valuation {live['id']} (running; it has not recorded" in message
    assert client.delete(f"/v1/valuations/{made['valuation']['id']}").status_code == 204
    assert _count(db, WarmupRun, WarmupRun.id == made["run"]) == 1  # kept for the live one
    assert tenant_blobs.list_keys(f"warmup/{made['key']}/")
    assert client.delete(f"/v1/valuations/{live['id']}").status_code == 204
    assert _count(db, WarmupRun) == 0 and tenant_blobs.list_keys() == []


def test_model_and_reward_spec(
    client: TestClient, db: Session, tenant_blobs: BlobStore, made: dict[str, Any]
) -> None:
    model_id = made["valuation"]["model_id"]
    spec = client.post(
        "/v1/reward-specs", json={"name": "em", "spec": {"kind": "exact_match"}}
    ).json()
    labelled = [{**r, "metadata": {"label": "x"}} for r in records(3, prefix="l")]
    ds = client.post("/v1/datasets", json={"name": "l", "records": labelled}).json()
    score_set = client.post(
        "/v1/score-sets",
        json={"scorer": "reward", "dataset_id": ds["id"], "reward_spec_id": spec["id"]},
    )
    assert score_set.status_code == 202, score_set.text
    message = _conflict(client.delete(f"/v1/reward-specs/{spec['id']}"))
    assert f"score set {score_set.json()['id']} (queued)" in message
    assert client.delete(f"/v1/reward-specs/{spec['id']}?cascade=true").status_code == 204
    assert client.get(f"/v1/score-sets/{score_set.json()['id']}").status_code == 404

    message = _conflict(client.delete(f"/v1/models/{model_id}"))
    assert f"valuation {made['valuation']['id']} (succeeded)" in message
    assert f"warmup run {made['run']}" not in message  # a cache: it goes with the valuation
    response = client.delete(f"/v1/models/{model_id}", params={"cascade": True})
    assert response.status_code == 204, response.text
    assert _count(db, Model) == _count(db, Valuation) == _count(db, WarmupRun) == 0
    assert tenant_blobs.list_keys() == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/datasets/{}",
        "/v1/models/{}",
        "/v1/reward-specs/{}",
        "/v1/valuations/{}",
        "/v1/selections/{}",
        "/v1/studies/{}",
        "/v1/score-sets/{}",
        "/v1/curations/{}",
        "/v1/warmup-runs/{}",
        "/v1/evaluations/{}",
    ],
)
def test_unknown_ids_are_404_and_reads_may_not_delete(
    make_client: Callable[..., TestClient], path: str
) -> None:
    admin, reader = make_client("team-a"), make_client("team-a", "read_only")
    response = admin.delete(path.format("nope"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert reader.delete(path.format("nope")).status_code == 403


def test_every_delete_is_documented(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    deletes = {p: ops["delete"] for p, ops in paths.items() if "delete" in ops}
    assert len(deletes) == 13  # ten resources, keys, secrets and webhooks
    cascading = {"datasets", "models", "reward-specs", "score-sets", "warmup-runs"}
    for path, op in deletes.items():
        assert {"204", "404"} <= set(op["responses"]), path
        kind = path.split("/")[2]
        params = {p["name"] for p in op.get("parameters", [])}
        assert ("cascade" in params) == (kind in cascading), path
        if kind in cascading:
            assert "409" in op["responses"] and "cascade" in op["description"], path
