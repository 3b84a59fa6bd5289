"""Several API processes on one port (``sift serve --workers 2``, as docker-compose runs it):
both answer, and ``/metrics`` from either one counts the requests of both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.integration.conftest import STACK_API_WORKERS, Stack

pytestmark = pytest.mark.integration


def _requests_counted(api: str, route: str) -> float:
    text = httpx.get(f"{api}/metrics", timeout=10).text
    pattern = (
        r'^sift_http_requests_total\{method="GET",route="' + re.escape(route) + r'",status="200"\}'
        r" ([0-9.e+]+)$"
    )
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def _counted_per_process(folder: Path, route: str) -> dict[str, float]:
    """Each process's own count of ``GET route`` 200s, from its sample file."""
    counts: dict[str, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            if sample.startswith("sift_http_requests") and labels.get("route") == route:
                if labels.get("status") == "200":
                    counts[pid] = counts.get(pid, 0.0) + value
    return counts


def test_both_processes_answer_and_metrics_count_them_all(stack: Stack) -> None:
    route = "/v1/me"
    before = _requests_counted(stack.api, route)
    per_thread, threads = 25, 16

    def call(_: int) -> list[int]:
        # a new connection for each request, 16 at once: while one process is busy, the
        # other accepts (they share one listening socket)
        with httpx.Client(base_url=stack.api, headers=stack.headers, timeout=30) as client:
            return [
                client.get(route, headers={"connection": "close"}).status_code
                for _ in range(per_thread)
            ]

    with ThreadPoolExecutor(threads) as pool:
        statuses = [s for batch in pool.map(call, range(threads)) for s in batch]
    n = per_thread * threads
    assert statuses == [200] * n
    # A request is counted after its response is sent: wait for the last few.
    deadline = time.monotonic() + 10
    while _requests_counted(stack.api, route) < before + n and time.monotonic() < deadline:
        time.sleep(0.1)
    # Each process keeps its own samples; any scrape, answered by either, sums them all.
    for _ in range(6):
        assert _requests_counted(stack.api, route) == before + n
    answered = _counted_per_process(stack.api_metrics_dir, route)
    assert sum(answered.values()) == before + n
    assert len([c for c in answered.values() if c > 0]) >= STACK_API_WORKERS, answered


def test_several_processes_need_a_real_broker_and_no_embedded_worker(
    stack: Stack, tmp_path: Path
) -> None:
    key_file = tmp_path / "api-key"
    env = {
        **stack.env,
        "SIFT_BROKER_URL": "memory://",
        "SIFT_ENV": "development",
        "SIFT_API_KEY_FILE": str(key_file),
    }
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "sift serve: " in run.stderr and "SIFT_API_WORKERS > 1 needs a real broker" in run.stderr
    assert not key_file.exists()  # refused before anything was written
