"""A user's whole path through the production stack: HTTP → Celery worker → Postgres → S3."""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import Stack, WorkerProcess
from tests.integration.servers import s3_client

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo_data"
SETTINGS: dict[str, Any] = {
    "warmup": {"fraction": 0.5, "epochs": 2, "learning_rate": 1e-3, "batch_size": 8, "seed": 0},
    "lora": {"r": 8, "alpha": 32},
    "projection": {"dim": 512, "seed": 0},
    "max_length": 96,
    "batch_size": 16,
    "shard_size": 40,
}


def _records(name: str, per_task: int | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (DEMO / name).read_text().splitlines() if line.strip()]
    if per_task is None:
        return rows
    seen: Counter[str] = Counter()
    kept = []
    for row in rows:
        task = row["metadata"]["task"]
        if seen[task] < per_task:
            seen[task] += 1
            kept.append(row)
    return kept


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _upload(api: httpx.Client, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.post(
        "/v1/datasets", files={"file": (f"{name}.jsonl", _jsonl(rows))}, data={"name": name}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _model(api: httpx.Client) -> str:
    existing = [
        m for m in api.get("/v1/models").json()["items"] if m["source"] == "builtin:tiny-llama"
    ]
    if existing:
        return str(existing[0]["id"])
    response = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait(
    api: httpx.Client,
    valuation_id: str,
    until: tuple[str, ...],
    timeout: float = 600,
    stack: Stack | None = None,
) -> dict[str, Any]:
    """The valuation once its status is in ``until``; stuck, it fails with what ``stack``'s
    database says is in flight and the end of its workers' logs."""
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/v1/valuations/{valuation_id}").json()
        if body["status"] in until:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"valuation stuck: {body}\n{_in_flight(stack, body['job_id'])}")
        time.sleep(0.5)


def _in_flight(stack: Stack | None, job_id: str) -> str:
    if stack is None:
        return ""
    engine = create_engine(stack.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM task_deliveries WHERE job_id = :job"), {"job": job_id}
        ).mappings()
        tasks = [{k: str(v) for k, v in row.items() if k != "payload"} for row in rows]
    engine.dispose()
    logs = [f"{p.name}: ...{p.read_text()[-3000:]}" for p in sorted(stack.logs.glob("worker-*"))]
    return "tasks in flight: " + json.dumps(tasks, indent=1) + "\n" + "\n".join(logs)


@pytest.fixture(scope="module")
def pool(stack: Stack) -> dict[str, Any]:
    with httpx.Client(base_url=stack.api, timeout=60, headers=stack.headers) as api:
        return _upload(api, "it-pool", _records("pool.jsonl", per_task=24))


def _value(
    api: httpx.Client, pool_id: str, probes_id: str, settings: dict[str, Any] = SETTINGS
) -> dict[str, Any]:
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": _model(api),
            "pool_dataset_id": pool_id,
            "probe_dataset_id": probes_id,
            "method": "less",
            "settings": settings,
        },
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_less_valuation_end_to_end(api: httpx.Client, stack: Stack, pool: dict[str, Any]) -> None:
    probe_rows = _records("probes.jsonl")
    probe_task = probe_rows[0]["metadata"]["task"]
    probes = _upload(api, "it-probes", probe_rows)
    queued = _value(api, pool["id"], probes["id"])
    assert queued["status"] == "queued"

    done = _wait(api, queued["id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["done"] == done["progress"]["total"]
    assert set(done["timings"]) >= {"warmup", "featurize", "score"}

    # Scores: every pool record once, ordered by rank, paged, with the per-subtask breakdown.
    first = api.get(
        f"/v1/valuations/{queued['id']}/scores", params={"limit": 50, "offset": 0}
    ).json()
    second = api.get(
        f"/v1/valuations/{queued['id']}/scores", params={"limit": 500, "offset": 50}
    ).json()
    items = first["items"] + second["items"]
    assert first["total"] == pool["n_records"] == len(items)
    assert [i["rank"] for i in items] == list(range(len(items)))
    assert all(a["score"] >= b["score"] for a, b in zip(items, items[1:], strict=False))
    subtasks = {r.get("subtask") for r in probe_rows}
    assert all(set(i["per_subtask"]) == subtasks for i in items)
    assert all(i["score"] == pytest.approx(max(i["per_subtask"].values())) for i in items)

    # Selection and verbatim export: the planted task dominates the top.
    top_k = 24
    selection = api.post(
        f"/v1/valuations/{queued['id']}/selections", json={"rule": "top_k", "value": top_k}
    )
    assert selection.status_code == 201, selection.text
    exported = api.get(
        f"/v1/selections/{selection.json()['id']}/export", params={"format": "jsonl"}
    )
    assert exported.status_code == 200
    records = [json.loads(line) for line in exported.text.splitlines()]
    assert [r.get("id") for r in records] == [i["record_id"] for i in items[:top_k]]
    uploaded = {r["id"]: r for r in _records("pool.jsonl", per_task=24)}
    assert all(r == uploaded[r["id"]] for r in records)
    share = sum(r["metadata"]["task"] == probe_task for r in records) / top_k
    assert share >= 0.5, f"only {share:.0%} of the top {top_k} come from the probes' task"

    # Artifacts landed in Postgres and in the S3 bucket (other tests share the stack: count
    # only this valuation's warmup run and its feature sets).
    engine = create_engine(stack.database_url)
    run = {"run": done["warmup_run_id"]}
    with engine.connect() as conn:
        n_checkpoints = conn.execute(
            text("select count(*) from checkpoints where warmup_run_id = :run"), run
        ).scalar()
        prefixes = (
            conn.execute(
                text(
                    "select blob_prefix from feature_sets f join checkpoints c "
                    "on f.checkpoint_id = c.id where c.warmup_run_id = :run "
                    "and f.status = 'complete'"
                ),
                run,
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert n_checkpoints == SETTINGS["warmup"]["epochs"]
    assert len(prefixes) == 4
    tenant = f"tenants/{api.get('/v1/me').json()['tenant_id']}/"  # the tenant's part of S3
    keys = [
        o["Key"].removeprefix(tenant)
        for page in s3_client(stack.s3_endpoint_url)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=stack.bucket, Prefix=tenant)
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith("warmup/") and k.endswith("adapter.safetensors") for k in keys)
    n_shards = -(-pool["n_records"] // SETTINGS["shard_size"])
    assert sum(k.startswith(tuple(p + "/" for p in prefixes)) for k in keys) == SETTINGS["warmup"][
        "epochs"
    ] * (n_shards + 1)
    assert f"scores/{queued['id']}.jsonl" in keys

    # The warmup's training curve on its run, and its plot from the S3 bucket.
    warm = api.get(f"/v1/warmup-runs/{done['warmup_run_id']}").json()
    n_train = math.ceil(SETTINGS["warmup"]["fraction"] * pool["n_records"])  # all fit in 96
    steps_per_epoch = math.ceil(n_train / SETTINGS["warmup"]["batch_size"])
    n_steps = SETTINGS["warmup"]["epochs"] * steps_per_epoch
    assert warm["curve"]["step"] == list(range(1, n_steps + 1))
    assert [e["step"] for e in warm["curve"]["epochs"]] == [
        steps_per_epoch * e for e in range(1, SETTINGS["warmup"]["epochs"] + 1)
    ]
    plot = api.get(warm["plots"]["png"])
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_second_probe_set_reuses_pool_features(api: httpx.Client, pool: dict[str, Any]) -> None:
    first = _upload(api, "it-probes-a", _records("probes.jsonl"))
    done = _wait(api, _value(api, pool["id"], first["id"])["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done["error"]

    other_task = next(
        r
        for r in _records("pool.jsonl")
        if r["metadata"]["task"] != _records("probes.jsonl")[0]["metadata"]["task"]
    )
    second_rows = [
        {"prompt": other_task["prompt"], "response": other_task["response"], "subtask": "other"}
    ]
    second = _upload(api, "it-probes-b", second_rows)
    again = _wait(api, _value(api, pool["id"], second["id"])["id"], ("succeeded", "failed"))
    assert again["status"] == "succeeded", again["error"]
    notes = " ".join(again["notes"])
    assert "reused warmup run" in notes
    assert notes.count("reused adam features") == SETTINGS["warmup"]["epochs"]
    assert "reused sgd features" not in notes


def test_cancel_mid_job(api: httpx.Client, pool: dict[str, Any]) -> None:
    probes = _upload(api, "it-probes-cancel", _records("probes.jsonl"))
    slow = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 30, "seed": 7}}
    queued = _value(api, pool["id"], probes["id"], slow)
    _wait(api, queued["id"], ("running",), timeout=120)
    response = api.post(f"/v1/valuations/{queued['id']}/cancel")
    assert response.status_code == 202, response.text
    done = _wait(api, queued["id"], ("cancelled", "succeeded", "failed"), timeout=300)
    assert done["status"] == "cancelled"
    assert api.get(f"/v1/valuations/{queued['id']}/scores").status_code == 409
    assert api.post(f"/v1/valuations/{queued['id']}/cancel").status_code == 409


def test_readyz_reports_every_dependency(api: httpx.Client) -> None:
    body = api.get("/readyz").json()
    assert api.get("/readyz").status_code == 200
    assert {"database", "broker", "blob_store"} <= set(json.dumps(body).replace('"', " ").split())


def test_worker_killed_mid_job_resumes_without_recomputing(
    api: httpx.Client, stack: Stack, pool: dict[str, Any]
) -> None:
    """SIGKILL the worker while it writes feature shards; a fresh worker receives the task again
    (acks_late), finishes it, and leaves the shards written before the kill untouched."""
    probes = _upload(api, "it-probes-kill", _records("probes.jsonl"))
    settings = {**SETTINGS, "shard_size": 8, "projection": {"dim": 256, "seed": 11}}
    queued = _value(api, pool["id"], probes["id"], settings)
    s3 = s3_client(stack.s3_endpoint_url)
    prefix = f"tenants/{api.get('/v1/me').json()['tenant_id']}/features/"

    def shards() -> dict[str, Any]:
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=stack.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj["LastModified"]
        return found

    before_kill = shards()
    deadline = time.monotonic() + 300
    while len(shards()) < len(before_kill) + 3:  # a few new shards of this job are stored
        assert time.monotonic() < deadline, api.get(f"/v1/valuations/{queued['id']}").json()
        time.sleep(0.2)
    stack.worker.kill()
    written = shards()
    assert api.get(f"/v1/valuations/{queued['id']}").json()["status"] == "running"

    stack.worker.start()
    done = _wait(api, queued["id"], ("succeeded", "failed", "cancelled"), 300, stack)
    assert done["status"] == "succeeded", done["error"]
    after = shards()
    assert {k: after[k] for k in written} == written, "finished shards were rewritten"
    assert len(after) > len(written)
    scores = api.get(f"/v1/valuations/{queued['id']}/scores", params={"limit": 1000}).json()
    assert scores["total"] == pool["n_records"]


def test_a_message_redis_dropped_is_sent_again(
    api: httpx.Client, stack: Stack, pool: dict[str, Any]
) -> None:
    """A worker that pops a message (BRPOP) and dies before Redis records it as unacknowledged
    takes the message with it; so does a Redis restarted without persistence. The recovery
    sweep finds the task in no queue and sends it again once it is heartbeat_stale_s old (5 s
    here), instead of waiting task_lost_s (an hour) with the job stalled."""
    import redis

    broker = redis.Redis.from_url(stack.env["SIFT_BROKER_URL"])
    probes = _upload(api, "it-probes-dropped", _records("probes.jsonl"))
    stack.worker.kill()  # nobody consumes: the valuation's first message waits in sift.gpu
    try:
        queued = _value(api, pool["id"], probes["id"], {**SETTINGS, "shard_size": 64})
        deadline = time.monotonic() + 60
        while (message := broker.rpop("sift.gpu")) is None:  # what the dying worker's BRPOP did
            assert time.monotonic() < deadline, "the valuation's task never reached sift.gpu"
            time.sleep(0.1)
        body = json.loads(message)
        _, kwargs, _ = json.loads(base64.b64decode(body["body"]))
        assert kwargs == {"valuation_id": queued["id"]}, kwargs  # this valuation's first task
        dropped = body["headers"]["id"]
    finally:
        stack.worker.start()
    done = _wait(api, queued["id"], ("succeeded", "failed", "cancelled"), 300, stack)
    assert done["status"] == "succeeded", done["error"]
    sweeps = [
        line
        for log in stack.logs.glob("worker-*.log")
        for line in log.read_text().splitlines()
        if "recovery sweep: Repairs(resent=" in line
    ]
    assert any(dropped in line for line in sweeps), sweeps


def test_shards_fan_out_over_several_workers(
    api: httpx.Client, stack: Stack, pool: dict[str, Any]
) -> None:
    """A second worker process joins: the job's shard tasks are shared between both workers,
    and scoring is handed over exactly once."""
    extra = WorkerProcess(stack.env, stack.logs, "it-extra")
    extra.start()
    try:
        ready = extra.log
        deadline = time.monotonic() + 60
        while "ready." not in (ready.read_text() if ready.exists() else ""):
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.2)
        probes = _upload(api, "it-probes-fanout", _records("probes.jsonl"))
        settings = {**SETTINGS, "shard_size": 4, "projection": {"dim": 128, "seed": 12}}
        queued = _value(api, pool["id"], probes["id"], settings)
        done = _wait(api, queued["id"], ("succeeded", "failed", "cancelled"), timeout=300)
        assert done["status"] == "succeeded", done["error"]
        assert done["progress"]["done"] == done["progress"]["total"]
        assert any("shards on the sift.gpu queue" in note for note in done["notes"])
    finally:
        extra.close()
    counts = {
        log.name: log.read_text().count("Task sift.valuation.featurize_shard[")
        for log in stack.logs.glob("worker-*.log")
    }
    assert sum(1 for n in counts.values() if n > 0) >= 2, counts
    scored = sum(
        log.read_text().count("Task sift.valuation.score[")
        for log in stack.logs.glob("worker-*.log")
    )
    assert scored >= 1


def test_nice_valuation_end_to_end(api: httpx.Client, pool: dict[str, Any]) -> None:
    """NICE through the stack: sample at every checkpoint, reward, policy gradients, scores,
    and the samples readable for audit. A 'contains' reward makes some random samples win."""
    probes = _upload(
        api,
        "it-probes-nice",
        [
            {"id": f"q{i}", "prompt": f"Say something with the letter e ({i}).", "response": "e"}
            for i in range(3)
        ],
    )
    reward = api.post(
        "/v1/reward-specs",
        json={"name": "has-e", "spec": {"kind": "contains", "ignore_case": True}},
    )
    assert reward.status_code == 201, reward.text
    settings = {
        **SETTINGS,
        "projection": {"dim": 256, "seed": 13},
        "nice": {"samples": 4, "max_new_tokens": 16, "seed": 1},
    }
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": _model(api),
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probes["id"],
            "method": "nice",
            "reward_spec_id": reward.json()["id"],
            "settings": settings,
        },
    )
    assert response.status_code == 202, response.text
    done = _wait(api, response.json()["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["done"] == done["progress"]["total"]

    samples = api.get(f"/v1/valuations/{done['id']}/samples", params={"limit": 100}).json()
    assert samples["total"] == 2 * 3 * 4  # epochs x probes x samples
    for s in samples["items"]:
        assert s["reward"] == (1.0 if "e" in s["text"].lower() else 0.0)
        assert 1 <= s["n_tokens"] <= 16
    scores = api.get(f"/v1/valuations/{done['id']}/scores", params={"limit": 1000}).json()
    assert scores["total"] == pool["n_records"]
    assert all(math.isfinite(s["score"]) for s in scores["items"])
    if any(s["reward"] > 0 for s in samples["items"]):
        assert any(s["score"] != 0 for s in scores["items"])
