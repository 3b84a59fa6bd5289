"""Webhooks through the production stack: a valuation with a callback_url, run by the Celery
worker (Postgres, Redis, S3), is announced to a loopback receiver with a signed delivery
(verified with the Standard Webhooks reference library), and the delivery log says so."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.embedded import embedded_sift
from tests.integration.conftest import Stack
from tests.webhook_receiver import serving

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo_data"
TINY: dict[str, Any] = {
    "warmup": {"fraction": 0.5, "epochs": 1, "learning_rate": 1e-3, "batch_size": 4,
               "warmup_ratio": 0.0},
    "lora": {"r": 4, "alpha": 16},
    "projection": {"dim": 64, "seed": 0},
    "max_length": 64,
    "batch_size": 8,
}  # fmt: skip


def _upload(api: httpx.Client, name: str, rows: list[dict[str, Any]]) -> str:
    body = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    response = api.post(
        "/v1/datasets", files={"file": (f"{name}.jsonl", body)}, data={"name": name}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _rows(name: str, n: int) -> list[dict[str, Any]]:
    lines = (DEMO / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()][:n]


def _model(api: httpx.Client) -> str:
    for m in api.get("/v1/models").json()["items"]:
        if m["source"] == "builtin:tiny-llama":
            return str(m["id"])
    response = api.post(
        "/v1/models", json={"name": "tiny-webhooks", "source": "builtin:tiny-llama"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_valuation_with_a_callback_url_gets_a_signed_delivery(
    api: httpx.Client, stack: Stack
) -> None:
    secret = api.post("/v1/webhook-secret")
    assert secret.status_code == 201, secret.text
    key = secret.json()["secret"]
    pool = _upload(api, "wh-pool", _rows("pool.jsonl", 16))
    probes = _upload(api, "wh-probes", _rows("probes.jsonl", 4))
    with serving() as receiver:
        refused = api.post(
            "/v1/valuations",
            json={
                "model_id": _model(api),
                "pool_dataset_id": pool,
                "probe_dataset_id": probes,
                "callback_url": "https://10.0.0.1/hook",  # the guard's refusal, at the API
            },
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "body.callback_url"
        created = api.post(
            "/v1/valuations",
            json={
                "model_id": _model(api),
                "pool_dataset_id": pool,
                "probe_dataset_id": probes,
                "settings": TINY,
                "callback_url": receiver.url,  # loopback: SIFT_OUTBOUND_ALLOW=127.0.0.1/32
            },
        )
        assert created.status_code == 202, created.text
        valuation = created.json()
        deadline = time.monotonic() + 600
        while not receiver.requests:
            state = api.get(f"/v1/valuations/{valuation['id']}").json()
            assert state["status"] in ("queued", "running", "succeeded"), state
            assert time.monotonic() < deadline, f"no delivery; valuation {state}"
            time.sleep(0.5)
        [(path, headers, body)] = receiver.requests
    assert path == "/hook"
    payload = Webhook(key).verify(body, headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["resource_id"] == valuation["id"]
    assert payload["data"]["resource_url"] == f"/v1/valuations/{valuation['id']}"
    assert payload["data"]["status"] == "succeeded"
    assert api.get(f"/v1/valuations/{valuation['id']}").json()["status"] == "succeeded"

    job_id = payload["data"]["job_id"]
    deadline = time.monotonic() + 30
    while True:  # the worker records the answer right after the POST returned
        log = api.get("/v1/webhook-deliveries", params={"job_id": job_id}).json()
        if log["items"] and log["items"][0]["status"] != "pending":
            break
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    [entry] = log["items"]
    assert entry["id"] == headers["webhook-id"] and entry["destination"] == "callback_url"
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == ("succeeded", 1, 200)
    assert entry["response_excerpt"] is None and entry["event_type"] == "job.succeeded"


def test_deliveries_do_not_wait_for_the_gpu_worker(api: httpx.Client, stack: Stack) -> None:
    """Webhooks have a queue and a worker of their own (``sift.events``): with the GPU worker
    down, a cancelled job's callback still arrives, signed, from the events worker."""
    key = api.post("/v1/webhook-secret").json()["secret"]
    pool = _upload(api, "wh-gpu-down-pool", _rows("pool.jsonl", 8))
    probes = _upload(api, "wh-gpu-down-probes", _rows("probes.jsonl", 2))
    stack.worker.kill()
    try:
        with serving() as receiver:
            created = api.post(
                "/v1/valuations",
                json={
                    "model_id": _model(api),
                    "pool_dataset_id": pool,
                    "probe_dataset_id": probes,
                    "settings": TINY,
                    "callback_url": receiver.url,
                },
            )
            assert created.status_code == 202, created.text
            valuation = created.json()
            assert api.get(f"/v1/valuations/{valuation['id']}").json()["status"] == "queued"
            deleted = api.delete(f"/v1/valuations/{valuation['id']}")
            assert deleted.status_code == 204, deleted.text
            deadline = time.monotonic() + 60
            while not receiver.requests:
                assert time.monotonic() < deadline, stack.events_worker.log.read_text()[-3000:]
                time.sleep(0.2)
            [(_, headers, body)] = receiver.requests
    finally:
        stack.worker.start()
    payload = Webhook(key).verify(body, headers)
    assert (payload["type"], payload["data"]["resource_id"]) == ("job.cancelled", valuation["id"])
    assert "Task sift.webhook.deliver[" in stack.events_worker.log.read_text()


def test_the_embedded_default_delivers_the_same_way(tmp_path: Path) -> None:
    """`sift serve` on SQLite with its in-process worker: a score set's callback_url gets the
    signed job.succeeded delivery, through the same outbox, task and guard."""
    allow = {"SIFT_OUTBOUND_ALLOW": "127.0.0.1/32"}  # the receiver below, as an operator would
    with embedded_sift(tmp_path, env=allow) as sift, sift.client() as api:
        secret = api.post("/v1/webhook-secret").json()["secret"]
        with serving() as receiver:
            dataset = _upload(api, "wh-embedded", _rows("pool.jsonl", 6))
            created = api.post(
                "/v1/score-sets",
                json={"scorer": "text", "dataset_id": dataset, "callback_url": receiver.url},
            )
            assert created.status_code == 202, created.text
            deadline = time.monotonic() + 120
            while not receiver.requests:
                assert time.monotonic() < deadline, sift.log_tail()
                time.sleep(0.2)
            [(_, headers, body)] = receiver.requests
        payload = Webhook(secret).verify(body, headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["resource_url"] == f"/v1/score-sets/{created.json()['id']}"
