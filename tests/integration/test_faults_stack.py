"""Fault injection on the production stack, with a Postgres and a Redis of this module's own (so
they can be stopped) and the session's S3: Postgres stopped for a few seconds mid-featurize,
Redis restarted mid-featurize without persistence and with it, the worker SIGKILLed
mid-score. Each time the valuation finishes with the scores of an undisturbed run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.conftest import REPO, WorkerProcess, create_key
from tests.integration.servers import (
    Servers,
    _as_postgres,
    _postgres,
    _process,
    free_port,
    wait_for,
)
from tests.integration.test_valuation_e2e import SETTINGS, _records, _upload

pytestmark = pytest.mark.integration

QUICK = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 1}, "shard_size": 4}


class Redis:
    """A redis-server this module may restart, with or without an append-only file."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._running: contextlib.ExitStack | None = None

    def start(self, *, persistent: bool) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root)]
        cmd += ["--save", ""] + (["--appendonly", "yes"] if persistent else ["--appendonly", "no"])
        self._running = contextlib.ExitStack()
        self._running.enter_context(_process(cmd, self.root / f"redis-{uuid.uuid4().hex}.log"))
        import redis

        wait_for(lambda: redis.Redis.from_url(self.url).ping(), "redis")

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None


@dataclass
class FaultStack:
    api: httpx.Client
    reference: httpx.Client
    """Another tenant, for undisturbed runs: caches are per tenant, so it recomputes."""
    worker: WorkerProcess
    pg_ctl: Callable[[str], None]
    redis: Redis
    database_url: str


@pytest.fixture(scope="module")
def faults(servers: Servers) -> Iterator[FaultStack]:
    root = Path(tempfile.mkdtemp(prefix="sift-faults-"))  # postgres must reach it: not under
    os.chmod(root, 0o755)  # pytest's root-only temporary folder
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        pg_url = stack.enter_context(_postgres(root))
        port = pg_url.rsplit(":", 1)[1].split("/")[0]
        bindir = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]).parent
        data = root / "pg"

        def pg_ctl(action: str) -> None:
            if action == "stop":
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
            else:
                options = f"-h 127.0.0.1 -p {port} -k {data}"
                log = str(root / "pg.log")
                _as_postgres(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        log,
                        "-w",
                        "-o",
                        options,
                        "start",
                    ]
                )

        redis = Redis(root)
        redis.start(persistent=True)
        stack.callback(redis.stop)
        bucket = f"sift-faults-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "SIFT_ENV": "production",
            "SIFT_DATABASE_URL": pg_url,
            "SIFT_BROKER_URL": redis.url,
            "SIFT_BLOB_URL": f"s3://{bucket}",
            "SIFT_S3_ENDPOINT_URL": servers.s3_endpoint_url,
            "SIFT_EMBEDDED_WORKER": "false",
            "SIFT_SECRET_KEY": os.environ.get(
                "SIFT_SECRET_KEY", "4Dk0d5qCqBH3o3pHqW2d3a1yRzGZbq8q3v9o9r2Yb0Y="
            ),
            "PYTHONUNBUFFERED": "1",
            "SIFT_BROKER_VISIBILITY_TIMEOUT_S": "3600",
            "SIFT_HEARTBEAT_INTERVAL_S": "1",
            "SIFT_HEARTBEAT_STALE_S": "5",
            "SIFT_SWEEP_INTERVAL_S": "1",
            # SIFT_TASK_LOST_S: production's hour; no fault here may need a shorter one
        }
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        key, reference_key = create_key(env, "faults"), create_key(env, "faults-reference")
        worker = WorkerProcess(env, root, "faults")
        worker.start()
        stack.callback(worker.close)
        api_port = free_port()
        api_cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(api_port)]
        stack.enter_context(_process(api_cmd, root / "api.log", env=env))
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: httpx.get(f"{base}/healthz").raise_for_status(), "the API", timeout=60)
        api = stack.enter_context(
            httpx.Client(base_url=base, timeout=60, headers={"authorization": f"Bearer {key}"})
        )
        reference = stack.enter_context(
            httpx.Client(
                base_url=base, timeout=60, headers={"authorization": f"Bearer {reference_key}"}
            )
        )
        try:
            yield FaultStack(api, reference, worker, pg_ctl, redis, pg_url)
        finally:
            for path in sorted(root.glob("*.log")):
                sys.stderr.write(f"\n--- {path.name} (tail) ---\n{path.read_text()[-2000:]}\n")


def _inputs(api: httpx.Client) -> dict[str, Any]:
    pool = _upload(api, "faults-pool", _records("pool.jsonl", per_task=16))
    probes = _upload(api, "faults-probes", _records("probes.jsonl"))
    model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"}).json()
    return {"pool": pool["id"], "probes": probes["id"], "model": model["id"]}


@pytest.fixture(scope="module")
def inputs(faults: FaultStack) -> dict[str, Any]:
    return _inputs(faults.api)


def _start(api: httpx.Client, inputs: dict[str, Any], seed: int) -> str:
    """A valuation whose projection seed makes its features its own (nothing cached)."""
    settings = {**QUICK, "projection": {"dim": 256, "seed": seed}}
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": inputs["model"],
            "pool_dataset_id": inputs["pool"],
            "probe_dataset_id": inputs["probes"],
            "settings": settings,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _poll(api: httpx.Client, valuation_id: str) -> dict[str, Any]:
    """The valuation's state, tolerating an API whose database is down for a moment."""
    for _ in range(100):
        response = api.get(f"/v1/valuations/{valuation_id}")
        if response.status_code == 200:
            return dict(response.json())
        time.sleep(0.2)
    raise AssertionError(f"the API did not answer: {response.status_code} {response.text}")


def _wait_until(
    api: httpx.Client, valuation_id: str, ready: Callable[[dict[str, Any]], bool]
) -> None:
    deadline = time.monotonic() + 300
    while not ready(body := _poll(api, valuation_id)):
        assert body["status"] in ("queued", "running"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def _finish(api: httpx.Client, valuation_id: str) -> list[tuple[str, float]]:
    deadline = time.monotonic() + 400
    while (body := _poll(api, valuation_id))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    assert body["status"] == "succeeded", body
    items = api.get(f"/v1/valuations/{valuation_id}/scores", params={"limit": 1000}).json()
    return [(s["record_id"], round(s["score"], 6)) for s in items["items"]]


def _mid_featurize(body: dict[str, Any]) -> bool:
    done, total = body["progress"]["done"], body["progress"]["total"]
    return body["stage"] == "featurize" and done < total


def _score_rows(database_url: str, valuation_id: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM scores WHERE valuation_id = :v"), {"v": valuation_id}
        ).scalar_one()
    engine.dispose()
    return int(n)


@pytest.fixture(scope="module")
def expected(faults: FaultStack) -> dict[int, list[tuple[str, float]]]:
    """Undisturbed runs of the same data in another tenant, one per projection seed the fault
    tests use (each fault test its own seed, so none finds another's features cached)."""
    api = faults.reference
    same = _inputs(api)
    return {seed: _finish(api, _start(api, same, seed)) for seed in (1, 2, 3, 4)}


def test_postgres_stopped_mid_featurize(
    faults: FaultStack, inputs: dict[str, Any], expected: dict[int, Any]
) -> None:
    valuation_id = _start(faults.api, inputs, seed=1)
    _wait_until(faults.api, valuation_id, _mid_featurize)
    faults.pg_ctl("stop")
    time.sleep(5)
    faults.pg_ctl("start")
    assert _finish(faults.api, valuation_id) == expected[1]
    assert _score_rows(faults.database_url, valuation_id) == len(expected[1])  # none twice


@pytest.mark.parametrize(("persistent", "seed"), [(False, 2), (True, 3)])
def test_redis_restarted_mid_featurize(
    faults: FaultStack,
    inputs: dict[str, Any],
    expected: dict[int, Any],
    persistent: bool,
    seed: int,
) -> None:
    """Without persistence the queued shard messages are gone: the sweep sends them again."""
    faults.redis.stop()
    faults.redis.start(persistent=persistent)  # the next restart keeps (or loses) the queue
    valuation_id = _start(faults.api, inputs, seed=seed)
    _wait_until(faults.api, valuation_id, _mid_featurize)
    faults.redis.stop()
    time.sleep(2)
    faults.redis.start(persistent=persistent)
    assert _finish(faults.api, valuation_id) == expected[seed]


def test_worker_killed_mid_score(
    faults: FaultStack, inputs: dict[str, Any], expected: dict[int, Any]
) -> None:
    valuation_id = _start(faults.api, inputs, seed=4)
    _wait_until(faults.api, valuation_id, lambda body: body["stage"] == "score")
    faults.worker.kill()
    faults.worker.start()
    assert _finish(faults.api, valuation_id) == expected[4]
    assert _score_rows(faults.database_url, valuation_id) == len(expected[4])
