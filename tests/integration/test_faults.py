"""Faults on the embedded default: `sift serve` SIGKILLed mid-featurize and started again
finishes its valuation (the in-memory broker lost every message; the restart resumes from what
is stored) with the scores of an undisturbed run, and a cancel of a job nothing runs ends it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.integration.servers import _process, free_port, wait_for
from tests.integration.test_valuation_e2e import SETTINGS, _jsonl, _records

REPO = Path(__file__).resolve().parents[2]
QUICK = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 1}, "shard_size": 8}


@contextlib.contextmanager
def serve(state: Path, log: str) -> Iterator[tuple[Any, httpx.Client]]:
    """`sift serve` on the embedded default in ``state`` (its ./.sift), with its admin key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_", "AWS_"))}
    env |= {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with _process(cmd, state / log, env=env, cwd=state) as proc:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: httpx.get(f"{base}/readyz").raise_for_status(), "sift serve", 90)
        except RuntimeError:
            raise AssertionError((state / log).read_text()[-3000:]) from None
        key = (state / ".sift" / "api-key").read_text().strip()
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=60, headers=headers) as api:
            yield proc, api


def _start(api: httpx.Client) -> str:
    pool = api.post(
        "/v1/datasets",
        files={"file": ("p.jsonl", _jsonl(_records("pool.jsonl", per_task=12)))},
        data={"name": "pool"},
    ).json()
    probes = api.post(
        "/v1/datasets", json={"name": "probes", "records": _records("probes.jsonl")}
    ).json()
    model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"}).json()
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probes["id"],
            "settings": QUICK,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _finish(api: httpx.Client, valuation_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := api.get(f"/v1/valuations/{valuation_id}").json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    return body


def _scores(api: httpx.Client, valuation_id: str) -> list[tuple[str, float]]:
    items = api.get(f"/v1/valuations/{valuation_id}/scores", params={"limit": 1000}).json()
    return [(s["record_id"], round(s["score"], 6)) for s in items["items"]]


def test_embedded_server_killed_mid_featurize_resumes_on_restart(tmp_path: Path) -> None:
    undisturbed, killed = tmp_path / "undisturbed", tmp_path / "killed"
    undisturbed.mkdir()
    killed.mkdir()
    with serve(undisturbed, "serve.log") as (_, api):
        reference = _finish(api, _start(api))
        assert reference["status"] == "succeeded", reference["error"]
        expected = _scores(api, reference["id"])

    with serve(killed, "first.log") as (proc, api):
        valuation_id = _start(api)
        deadline = time.monotonic() + 300
        while True:  # some shards stored, not all
            body = api.get(f"/v1/valuations/{valuation_id}").json()
            done, total = body["progress"]["done"], body["progress"]["total"]
            if body["stage"] == "featurize" and 0 < done < total:
                break
            assert body["status"] == "running" or body["status"] == "queued", body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with serve(killed, "second.log") as (_, api):
        body = _finish(api, valuation_id)
        assert body["status"] == "succeeded", (body, (killed / "second.log").read_text()[-3000:])
        assert _scores(api, valuation_id) == expected
        assert "resumed unfinished jobs" in (killed / "second.log").read_text()
