"""Faults on the embedded default: `sift serve` SIGKILLed mid-featurize and started again
finishes its valuation (the in-memory broker lost every message; the restart resumes from what
is stored) with the scores of an undisturbed run, and a cancel of a job nothing runs ends it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.embedded import VALUATION_SETTINGS, embedded_sift, finished, start_valuation
from tests.integration.test_valuation_e2e import _jsonl, _records

QUICK = {**VALUATION_SETTINGS, "shard_size": 8}


def _start(api: httpx.Client) -> str:
    pool = _jsonl(_records("pool.jsonl", per_task=12))
    return start_valuation(api, pool, _records("probes.jsonl"), QUICK)[0]


def _finish(api: httpx.Client, valuation_id: str) -> dict[str, Any]:
    return finished(api, valuation_id, timeout=300, interval=0.3)


def _scores(api: httpx.Client, valuation_id: str) -> list[tuple[str, float]]:
    items = api.get(f"/v1/valuations/{valuation_id}/scores", params={"limit": 1000}).json()
    return [(s["record_id"], round(s["score"], 6)) for s in items["items"]]


def test_embedded_server_killed_mid_featurize_resumes_on_restart(tmp_path: Path) -> None:
    undisturbed, killed = tmp_path / "undisturbed", tmp_path / "killed"
    undisturbed.mkdir()
    killed.mkdir()
    with embedded_sift(undisturbed) as sift, sift.client() as api:
        reference = _finish(api, _start(api))
        assert reference["status"] == "succeeded", reference["error"]
        expected = _scores(api, reference["id"])

    with embedded_sift(killed, log="first.log") as sift, sift.client() as api:
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
        os.killpg(sift.proc.pid, signal.SIGKILL)
        sift.proc.wait()
    with embedded_sift(killed, log="second.log") as sift, sift.client() as api:
        body = _finish(api, valuation_id)
        assert body["status"] == "succeeded", (body, sift.log_tail())
        assert _scores(api, valuation_id) == expected
        assert "resumed unfinished jobs" in sift.log.read_text()
