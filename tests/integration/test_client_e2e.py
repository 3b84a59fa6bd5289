"""A whole valuation through ``service.client`` and through the ``sift`` CLI (a subprocess),
against the production stack: uvicorn API → Celery worker → Postgres → Redis → S3.

Upload the demo pool (a slice) and probes, register builtin:tiny-llama, value with a wait
that reports progress, select the top k, export. Settings are tiny: one warmup epoch on 20
records, 256-dimensional features."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.client import Client, Progress
from tests.integration.conftest import REPO, Stack

pytestmark = pytest.mark.integration

DEMO = REPO / "service" / "demo_data"
TINY = "builtin:tiny-llama"
SETTINGS: dict[str, Any] = {
    "warmup": {"fraction": 0.5, "epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "seed": 0},
    "lora": {"r": 4, "alpha": 16},
    "projection": {"dim": 256, "seed": 0},
    "max_length": 64,
    "batch_size": 16,
    "shard_size": 20,
}
TOP_K = 8


def _pool(tmp_path: Path, per_task: int = 8) -> tuple[Path, list[dict[str, Any]]]:
    """The first ``per_task`` records of each task of the demo pool, as a JSONL file."""
    rows, seen = [], Counter[str]()
    for line in (DEMO / "pool.jsonl").read_text().splitlines():
        row = json.loads(line)
        if seen[row["metadata"]["task"]] < per_task:
            seen[row["metadata"]["task"]] += 1
            rows.append(row)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_a_valuation_through_the_client(stack: Stack, tmp_path: Path) -> None:
    pool_path, rows = _pool(tmp_path)
    with Client(stack.api, stack.api_key, timeout=60) as sift:
        assert sift.me().role == "admin"
        pool = sift.datasets.upload(pool_path, name="client-pool")
        probes = sift.datasets.upload(DEMO / "probes.jsonl", name="client-probes")
        assert pool.n_records == len(rows) == 40
        model = next((m for m in sift.models.iter() if m.source == TINY), None)
        model = model or sift.models.create("tiny", TINY)

        queued = sift.valuations.create(
            model_id=model.id,
            pool_dataset_id=pool.id,
            probe_dataset_id=probes.id,
            method="less",
            settings=SETTINGS,
        )
        assert queued.status == "queued"
        seen: list[Progress] = []
        done = sift.wait(queued, progress=seen.append, timeout=300, poll_interval=0.25)
        assert done.status == "succeeded", done.error
        assert seen[-1].status == "succeeded" and seen[-1].eta_s == 0
        assert any(p.status == "running" and p.stage for p in seen), [p.describe() for p in seen]
        assert any(p.total > 0 for p in seen)
        assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)

        scores = list(sift.valuations.iter_scores(done, page_size=16))  # three pages
        assert [s.rank for s in scores] == list(range(len(rows)))
        assert all(a.score >= b.score for a, b in zip(scores, scores[1:], strict=False))

        selection = sift.valuations.select(done, rule="top_k", value=TOP_K)
        assert selection.record_ids == [s.record_id for s in scores[:TOP_K]]
        exported = list(sift.selections.export(selection))
        by_id = {r["id"]: r for r in rows}
        assert exported == [by_id[s.record_id] for s in scores[:TOP_K]]


def _sift(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIFT_URL": stack.api, "SIFT_API_KEY": stack.api_key}
    env.pop("SIFT_DATABASE_URL", None)  # the CLI needs the API only
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, f"sift {' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_a_valuation_through_the_cli(stack: Stack, tmp_path: Path) -> None:
    pool_path, rows = _pool(tmp_path)
    pool = json.loads(_sift(stack, "datasets", "upload", str(pool_path), "--json").stdout)
    probes_file = str(DEMO / "probes.jsonl")
    probes = json.loads(_sift(stack, "datasets", "upload", probes_file, "--json").stdout)
    assert (pool["name"], pool["n_records"]) == ("pool", len(rows))
    model = json.loads(_sift(stack, "models", "register", TINY, "--reuse", "--json").stdout)

    # Another warmup seed than the client's valuation: a warmup and features of its own, so
    # the job runs long enough for several polls to see it running.
    settings = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "seed": 1}}
    started = _sift(
        stack,
        "valuations",
        "start",
        "--model",
        model["id"],
        "--pool",
        pool["id"],
        "--probes",
        probes["id"],
        "--settings",
        json.dumps(settings),
        "--wait",
        "--timeout",
        "300",
        "--poll-interval",
        "0.2",
        "--json",
    )
    valuation = json.loads(started.stdout)
    assert valuation["status"] == "succeeded", valuation["error"]
    vid = valuation["id"]
    progress = started.stderr
    print(progress)  # shown with -s, and with the report of a failure
    assert f"valuation {vid} queued" in progress
    assert re.search(rf"valuation {vid} running \S+ \d+/\d+", progress), progress
    assert f"valuation {vid} succeeded" in progress

    table = _sift(stack, "valuations", "scores", vid, "--limit", "5").stdout
    assert "rank" in table and "score" in table and f"of {len(rows)}" in table

    selection = json.loads(
        _sift(stack, "valuations", "select", vid, "--top-k", str(TOP_K), "--json").stdout
    )
    assert selection["n_selected"] == TOP_K
    out = tmp_path / "top.jsonl"
    wrote = _sift(stack, "selections", "export", selection["id"], "--output", str(out)).stdout
    assert f"wrote {TOP_K} records" in wrote
    by_id = {r["id"]: r for r in rows}
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported == [by_id[i] for i in selection["record_ids"]]
