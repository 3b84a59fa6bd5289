"""Tenancy on the production stack (uvicorn API, Celery worker, Postgres, Redis, S3): the route
walk as another tenant over real, worker-made resources; no key, no access; and caches that
never cross tenants (an identical valuation of another tenant recomputes, with equal scores)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import tenancy_walk
from tests.integration.conftest import Stack, create_key
from tests.integration.servers import s3_client
from tests.integration.test_valuation_e2e import SETTINGS, _records, _upload
from tests.service.test_warmup_runs import adapter

pytestmark = pytest.mark.integration

QUICK = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 1}}
NAMES = {
    "dataset": "walk-pool",
    "model": "walk-model",
    "reward_spec": "walk-judge",
    "secret": "walk-secret",
    "key": "walk-key",
}


@pytest.fixture(scope="module")
def clients(stack: Stack) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Admins of two fresh tenants, with keys made by ``sift keys create``."""
    a_key, b_key = create_key(stack.env, "walk-a"), create_key(stack.env, "walk-b")
    with (
        httpx.Client(
            base_url=stack.api, timeout=60, headers={"authorization": f"Bearer {a_key}"}
        ) as a,
        httpx.Client(
            base_url=stack.api, timeout=60, headers={"authorization": f"Bearer {b_key}"}
        ) as b,
    ):
        yield a, b


def _finished(api: httpx.Client, path: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := api.get(path).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    return body


def _valuation(api: httpx.Client, model_id: str, pool_id: str, probes_id: str) -> dict[str, Any]:
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": model_id,
            "pool_dataset_id": pool_id,
            "probe_dataset_id": probes_id,
            "settings": QUICK,
        },
    )
    assert response.status_code == 202, response.text
    body = _finished(api, f"/v1/valuations/{response.json()['id']}")
    assert body["status"] == "succeeded", body
    return body


def _scores(api: httpx.Client, valuation_id: str) -> list[tuple[str, float]]:
    items = api.get(f"/v1/valuations/{valuation_id}/scores", params={"limit": 1000}).json()
    return [(s["record_id"], s["score"]) for s in items["items"]]


def test_tenants_are_isolated_on_the_production_stack(
    stack: Stack, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, b = clients
    rows = _records("pool.jsonl", per_task=4)
    for i, row in enumerate(rows):
        row["metadata"] = {**row["metadata"], "pair": str(i)}
    pool = _upload(a, NAMES["dataset"], rows)
    probes = _upload(a, "walk-probes", _records("probes.jsonl")[:4])
    model = a.post("/v1/models", json={"name": NAMES["model"], "source": "builtin:tiny-llama"})
    judge = {"kind": "http_judge", "url": "https://judge.example.com/s", "headers": {"X-K": "t0k"}}
    spec = a.post("/v1/reward-specs", json={"name": NAMES["reward_spec"], "spec": judge})
    secret = a.post(
        "/v1/secrets",
        json={"name": NAMES["secret"], "value": "s3cr3t-value", "hosts": ["a.example.com"]},
    )
    assert model.status_code == spec.status_code == secret.status_code == 201
    model_id = model.json()["id"]

    valuation = _valuation(a, model_id, pool["id"], probes["id"])
    selection = a.post(
        f"/v1/valuations/{valuation['id']}/selections", json={"rule": "top_k", "value": 3}
    ).json()
    run = a.post(
        "/v1/warmup-runs",
        data={"model_id": model_id, "lora_alpha": "16", "steps": "10", "learning_rates": "1e-4"},
        files={"adapters": ("adapter_model.safetensors", adapter(0))},
    )
    assert run.status_code == 201, run.text
    study = a.post(
        "/v1/studies",
        json={
            "warmup_run_id": valuation["warmup_run_id"],
            "eval_dataset_id": pool["id"],
            "probe_sets": [{"name": "p", "dataset_id": pool["id"]}],
        },
    ).json()
    score_set = a.post("/v1/score-sets", json={"scorer": "text", "dataset_id": pool["id"]})
    score_set_id = score_set.json()["id"]
    assert _finished(a, f"/v1/score-sets/{score_set_id}")["status"] == "succeeded"
    curation = a.post(
        "/v1/curations",
        json={
            "dataset_id": pool["id"],
            "pick": {"method": "rank", "by": {"score_set_id": score_set_id, "column": "ttr"}},
            "budget": 2,
        },
    ).json()
    assert _finished(a, f"/v1/curations/{curation['id']}")["status"] == "succeeded"
    evaluation = a.post(
        "/v1/evaluations",
        json={
            "model_id": model_id,
            "pool_dataset_id": pool["id"],
            "target_dataset_id": probes["id"],
            "budget": 2,
            "arms": [{"kind": "curation", "curation_id": curation["id"]}],
            "settings": {
                "training": {"epochs": 1, "warmup_ratio": 0.0},
                "max_length": 96,
                "bootstrap": 10,
            },
        },
    )
    assert evaluation.status_code == 202, evaluation.text
    ids = {
        "dataset": pool["id"],
        "model": model_id,
        "reward_spec": spec.json()["id"],
        "valuation": valuation["id"],
        "selection": selection["id"],
        "warmup_run": run.json()["id"],
        "study": study["id"],
        "score_set": score_set_id,
        "curation": curation["id"],
        "evaluation": evaluation.json()["id"],
        "webhook": a.post(
            "/v1/webhooks", json={"url": "https://a.example.com/h", "event_types": ["job.failed"]}
        ).json()["id"],
        "key": a.get("/v1/me").json()["key_id"],
        "secret": NAMES["secret"],
    }
    openapi = httpx.get(f"{stack.api}/openapi.json").json()

    def call_b(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return b.request(method, url, **kwargs)

    problems = tenancy_walk.walk(openapi, call_b, ids, NAMES, adapter(1))
    assert not problems, tenancy_walk.dumps(problems)

    with httpx.Client(base_url=stack.api, timeout=60) as anonymous:

        def call_anonymous(method: str, url: str, **kwargs: Any) -> httpx.Response:
            return anonymous.request(method, url, **kwargs)

        problems = tenancy_walk.unauthenticated(openapi, call_anonymous, ids)
        assert not problems, tenancy_walk.dumps(problems)

    # A still has everything, and the judge's header never came back.
    assert a.get(f"/v1/selections/{selection['id']}/export").status_code == 200
    assert "t0k" not in a.get(f"/v1/reward-specs/{ids['reward_spec']}").text

    # The same data and settings in tenant B: recomputed (no cache hit across tenants), with
    # the same scores; A's blobs and B's live under different prefixes.
    b_pool = _upload(b, "b-pool", rows)
    b_probes = _upload(b, "b-probes", _records("probes.jsonl")[:4])
    b_model = b.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
    b_valuation = _valuation(b, b_model.json()["id"], b_pool["id"], b_probes["id"])
    assert not any("reused" in note for note in b_valuation["notes"]), b_valuation["notes"]
    assert b_valuation["warmup_run_id"] != valuation["warmup_run_id"]
    a_scores, b_scores = _scores(a, valuation["id"]), _scores(b, b_valuation["id"])
    assert [r for r, _ in b_scores] == [r for r, _ in a_scores]
    assert [s for _, s in b_scores] == pytest.approx([s for _, s in a_scores], abs=1e-6)
    tenants = {a.get("/v1/me").json()["tenant_id"], b.get("/v1/me").json()["tenant_id"]}
    s3 = s3_client(stack.s3_endpoint_url)
    for tenant in tenants:
        listed = s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"tenants/{tenant}/features/")
        assert listed.get("KeyCount", 0) > 0, tenant
