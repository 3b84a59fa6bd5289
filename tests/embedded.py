"""``sift serve`` on the embedded default (SQLite, local blobs, in-process worker) in a
subprocess, started as the README says: a folder as its working directory (its state goes to
``./.sift``), a free loopback port, ready when ``/readyz`` answers; its admin key read from
``.sift/api-key``.

Only ``tests.integration.servers`` (process and port helpers, no fixtures) is imported, so
tests/browser and tests/service can use this without the integration fixtures.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.integration.servers import _process, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]

VALUATION_SETTINGS: dict[str, Any] = {
    "warmup": {"fraction": 0.5, "epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "seed": 0},
    "lora": {"r": 8, "alpha": 32},
    "projection": {"dim": 512, "seed": 0},
    "max_length": 96,
    "batch_size": 16,
    "shard_size": 40,
}
"""The demo valuation's settings (tests/integration/test_valuation_e2e.py) with one warmup epoch."""


def clean_env() -> dict[str, str]:
    """This process's environment without Sift's and AWS's settings: the embedded default."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_", "AWS_"))}


@dataclass(frozen=True)
class EmbeddedSift:
    """A running ``sift serve``: its URL, admin key, working directory, log and process."""

    url: str
    api_key: str
    folder: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def client(self, timeout: float = 60) -> httpx.Client:
        """An HTTP client of the server carrying its admin key (close it, or use ``with``)."""
        headers = {"authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)


@contextlib.contextmanager
def embedded_sift(
    folder: Path,
    *,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    log: str = "serve.log",
    timeout: float = 90,
    tail: int = 3000,
) -> Iterator[EmbeddedSift]:
    """``sift serve`` with ``folder`` as its working directory, output to ``folder / log``;
    yields once ``/readyz`` answers (else an AssertionError with the log's last ``tail``
    characters), stopped at the end (SIGTERM to its process group, SIGKILL after 15 s; a test
    may kill it first).

    The environment: ``base_env`` (default :func:`clean_env`) with ``PYTHONUNBUFFERED=1`` and
    this repository on ``PYTHONPATH``, then ``env`` on top (e.g. ``SIFT_OUTBOUND_ALLOW``)."""
    environ = dict(clean_env() if base_env is None else base_env)
    environ |= {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    environ |= env or {}
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    log_path = folder / log
    with _process(cmd, log_path, env=environ, cwd=folder) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: httpx.get(f"{url}/readyz").raise_for_status(), "sift serve", timeout)
        except RuntimeError:
            raise AssertionError(log_path.read_text(errors="replace")[-tail:]) from None
        key = (folder / ".sift" / "api-key").read_text().strip()
        yield EmbeddedSift(url=url, api_key=key, folder=folder, log=log_path, proc=proc)


def start_valuation(
    api: httpx.Client,
    pool_jsonl: bytes,
    probes: list[dict[str, Any]],
    settings: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Upload a pool (``pool``, as a JSONL file) and probes (``probes``, as JSON), register
    builtin:tiny-llama and start a valuation of the pool; its id and the pool."""
    pool = api.post(
        "/v1/datasets", files={"file": ("p.jsonl", pool_jsonl)}, data={"name": "pool"}
    ).json()
    probe_set = api.post("/v1/datasets", json={"name": "probes", "records": probes}).json()
    model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"}).json()
    response = api.post(
        "/v1/valuations",
        json={
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probe_set["id"],
            "settings": settings,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"]), pool


def finished(
    api: httpx.Client, valuation_id: str, timeout: float = 300, interval: float = 0.5
) -> dict[str, Any]:
    """The valuation once it is neither queued nor running (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while (body := api.get(f"/v1/valuations/{valuation_id}").json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, body
        time.sleep(interval)
    return body
