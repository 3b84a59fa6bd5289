"""Benchmarks as pytest items (``pytest -m benchmark tests/benchmarks``; not in the default run).

They print throughput and check only that the measurement happened; no wall-clock limits.
GPU shapes run through ``python -m tests.benchmarks.featurize_bench`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.benchmark


def _bench(*args: str) -> str:
    cmd = [sys.executable, "-m", "tests.benchmarks.featurize_bench", *args]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    print(out)
    return out


def test_featurize_tiny_model_on_cpu() -> None:
    out = _bench("--shape", "tiny", "--device", "cpu", "--batch-sizes", "8", "--batches", "4")
    assert "sift_examples_per_s" in out and "spearman" in out


def test_scoring_on_cpu() -> None:
    out = _bench("--score", "--device", "cpu", "--score-pool", "65536", "--score-probes", "1000")
    assert "pool_rows_per_s_in_memory" in out


def test_nice_cost_per_probe_on_cpu() -> None:
    out = _bench("--nice", "--shape", "tiny", "--device", "cpu", "--nice-probes", "4")
    assert "generation_s_per_probe" in out and "gradient_s_per_probe" in out


def test_upload_memory_small() -> None:
    cmd = [sys.executable, "-m", "tests.benchmarks.upload_bench"]
    cmd += ["--jsonl-mb", "20", "--adapter-mb", "20"]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    print(out)
    assert '"rss_peak_growth_mb"' in out and '"adapter"' in out


def test_api_under_load_short() -> None:
    """wrk against a real API on SQLite (docs/benchmarks.md runs both backends, 10 s a point):
    every connection count is answered (2xx or a quick 503), and /healthz never fails."""
    cmd = [sys.executable, "-m", "tests.benchmarks.load_bench", "--backends", "sqlite"]
    cmd += ["--clients", "50", "1000", "--duration", "3", "--pause", "0.5"]
    out = subprocess.run(
        cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300
    ).stdout
    print(out)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"backend"')]
    assert len(rows) == 4
    for row in rows:
        assert row["n_other"] == 0 and row["n_2xx"] > 0
        assert row["healthz_during"]["failures"] == 0 and row["healthy_after_ms"] is not None
