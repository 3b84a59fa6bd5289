"""Deleting on the production stack (uvicorn API, Celery worker, Postgres, Redis, S3): a
succeeded valuation's rows and S3 objects go, the features it shared go with the last valuation
that used them, a dataset is deletable after a failed valuation, and a running valuation
deleted mid-job leaves nothing behind once its worker notices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import Stack, create_key
from tests.integration.servers import s3_client
from tests.integration.test_valuation_e2e import SETTINGS, _records, _upload

pytestmark = pytest.mark.integration

QUICK = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 1}}
ROWS = (
    "valuations",
    "jobs",
    "scores",
    "selections",
    "warmup_runs",
    "checkpoints",
    "feature_sets",
    "task_deliveries",
)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    """An admin of a tenant of its own: nothing another test makes is counted here."""
    key = create_key(stack.env, "deletion")
    with httpx.Client(
        base_url=stack.api, timeout=60, headers={"authorization": f"Bearer {key}"}
    ) as client:
        yield client


def _finished(api: httpx.Client, path: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := api.get(path).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    return body


def _value(api: httpx.Client, model_id: str, pool: str, probes: str, **settings: Any) -> str:
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": model_id,
            "pool_dataset_id": pool,
            "probe_dataset_id": probes,
            "settings": {**QUICK, **settings},
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _rows(stack: Stack, tenant: str) -> dict[str, int]:
    """Rows of the tenant per table (task deliveries by their job's tenant)."""
    engine = create_engine(stack.database_url)
    with engine.connect() as conn:
        counts = {
            table: conn.execute(
                text(f"select count(*) from {table} where tenant_id = :t"), {"t": tenant}
            ).scalar_one()
            for table in ROWS
            if table != "task_deliveries"
        }
        counts["task_deliveries"] = conn.execute(
            text(
                "select count(*) from task_deliveries d join jobs j on d.job_id = j.id "
                "where j.tenant_id = :t"
            ),
            {"t": tenant},
        ).scalar_one()
    engine.dispose()
    return counts


def _keys(stack: Stack, tenant: str) -> list[str]:
    prefix = f"tenants/{tenant}/"
    pages = (
        s3_client(stack.s3_endpoint_url)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=stack.bucket, Prefix=prefix)
    )
    return sorted(o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def inputs(api: httpx.Client) -> dict[str, str]:
    model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
    assert model.status_code == 201, model.text
    probes = _records("probes.jsonl")
    return {
        "tenant": api.get("/v1/me").json()["tenant_id"],
        "model": model.json()["id"],
        "pool": _upload(api, "del-pool", _records("pool.jsonl", per_task=8))["id"],
        "probes_a": _upload(api, "del-probes-a", probes[:4])["id"],
        "probes_b": _upload(api, "del-probes-b", probes[4:8])["id"],
    }


def test_deleting_valuations_removes_rows_and_objects_and_collects_shared_features(
    api: httpx.Client, stack: Stack, inputs: dict[str, str]
) -> None:
    tenant = inputs["tenant"]
    first = _value(api, inputs["model"], inputs["pool"], inputs["probes_a"])
    assert _finished(api, f"/v1/valuations/{first}")["status"] == "succeeded"
    second = _value(api, inputs["model"], inputs["pool"], inputs["probes_b"])
    done = _finished(api, f"/v1/valuations/{second}")
    assert done["status"] == "succeeded", done["error"]
    assert "reused warmup run" in " ".join(done["notes"])  # the pool's run and features shared
    selection = api.post(f"/v1/valuations/{first}/selections", json={"rule": "top_k", "value": 3})
    assert selection.status_code == 201
    before = _rows(stack, tenant)
    keys = _keys(stack, tenant)
    assert before["feature_sets"] == 3  # pool, probes a, probes b (one checkpoint)
    assert f"scores/{first}.jsonl" in keys and any(k.startswith("warmup/") for k in keys)

    assert api.delete(f"/v1/valuations/{first}").status_code == 204
    assert api.get(f"/v1/valuations/{first}").status_code == 404
    assert api.get(f"/v1/selections/{selection.json()['id']}").status_code == 404
    after = _rows(stack, tenant)
    assert after["valuations"] == before["valuations"] - 1
    assert after["jobs"] == before["jobs"] - 1
    assert after["scores"] == before["scores"] // 2 and after["selections"] == 0
    assert after["warmup_runs"] == 1 and after["feature_sets"] == 2  # kept for the second
    left = _keys(stack, tenant)
    assert f"scores/{first}.jsonl" not in left and f"scores/{second}.jsonl" in left
    assert len([k for k in left if k.startswith("features/")]) < len(
        [k for k in keys if k.startswith("features/")]
    )
    assert api.get(f"/v1/valuations/{second}/scores").json()["total"] > 0  # untouched

    assert api.delete(f"/v1/valuations/{second}").status_code == 204
    assert _rows(stack, tenant) == dict.fromkeys(ROWS, 0)
    assert _keys(stack, tenant) == []  # every score file, checkpoint and feature shard


def test_a_dataset_can_be_deleted_after_a_failed_valuation(
    api: httpx.Client, stack: Stack, inputs: dict[str, str]
) -> None:
    # 20 records: half of them make 2 steps of batch 8 (1 step would be a 422, see
    # test_valuations' warmup-that-cannot-learn test); max_length 8 then fails the job
    pool = _upload(api, "del-doomed", _records("pool.jsonl", per_task=4))["id"]
    failed = _value(api, inputs["model"], pool, inputs["probes_a"], max_length=8)
    body = _finished(api, f"/v1/valuations/{failed}")
    assert body["status"] == "failed", body
    refused = api.delete(f"/v1/datasets/{pool}")
    assert refused.status_code == 409
    assert f"valuation {failed} (failed)" in refused.json()["error"]["message"]
    assert api.delete(f"/v1/datasets/{pool}", params={"cascade": "true"}).status_code == 204
    assert api.get(f"/v1/datasets/{pool}").status_code == 404
    assert api.get(f"/v1/valuations/{failed}").status_code == 404
    assert _rows(stack, inputs["tenant"]) == dict.fromkeys(ROWS, 0)
    assert _keys(stack, inputs["tenant"]) == []


def test_a_running_valuation_deleted_mid_job_leaves_nothing(
    api: httpx.Client, stack: Stack, inputs: dict[str, str]
) -> None:
    slow = {"warmup": {**SETTINGS["warmup"], "epochs": 30, "seed": 5}}
    valuation = _value(api, inputs["model"], inputs["pool"], inputs["probes_a"], **slow)
    deadline = time.monotonic() + 180
    while (body := api.get(f"/v1/valuations/{valuation}").json())["stage"] != "warmup":
        assert body["status"] in ("queued", "running") and time.monotonic() < deadline, body
        time.sleep(0.2)
    log_before = stack.worker.log.read_text()
    assert api.delete(f"/v1/valuations/{valuation}").status_code == 204
    assert api.get(f"/v1/valuations/{valuation}").status_code == 404
    # the worker notices at its next step, drops the job and collects the run it was training
    deadline = time.monotonic() + 120
    noticed = ("its task drops its work", "does not exist; dropping task")
    while not any(n in stack.worker.log.read_text()[len(log_before) :] for n in noticed):
        assert time.monotonic() < deadline, stack.worker.log.read_text()[len(log_before) :]
        time.sleep(0.5)
    time.sleep(2)  # anything it would still write
    assert _rows(stack, inputs["tenant"]) == dict.fromkeys(ROWS, 0)
    assert _keys(stack, inputs["tenant"]) == []
    new_log = stack.worker.log.read_text()[len(log_before) :]
    assert "Traceback" not in new_log and "internal error" not in new_log, new_log
    # the worker is free and well: the next valuation runs
    again = _value(api, inputs["model"], inputs["pool"], inputs["probes_a"])
    assert _finished(api, f"/v1/valuations/{again}")["status"] == "succeeded"
    assert api.delete(f"/v1/valuations/{again}").status_code == 204
