"""The embedded default — SQLite, a local blob folder, an in-process worker — runs the same
valuation path as production, started exactly as the README says (`sift serve`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from tests.integration.servers import _process, free_port, wait_for
from tests.integration.test_valuation_e2e import SETTINGS, _jsonl, _records


def test_sift_serve_embedded_values_a_pool(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_", "AWS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    sift = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(repo)
    with _process(sift, tmp_path / "serve.log", env=env, cwd=tmp_path) as proc:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: httpx.get(f"{base}/readyz").raise_for_status(), "sift serve", timeout=90
            )
        except RuntimeError:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
        assert proc.poll() is None
        # The first start made an admin key of tenant "local", printed it and kept it 0600.
        key_file = tmp_path / ".sift" / "api-key"
        key = key_file.read_text().strip()
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key in (tmp_path / "serve.log").read_text()
        assert httpx.get(f"{base}/v1/datasets").status_code == 401
        with httpx.Client(
            base_url=base, timeout=60, headers={"authorization": f"Bearer {key}"}
        ) as api:
            assert api.get("/v1/me").json()["tenant_name"] == "local"
            pool = api.post(
                "/v1/datasets",
                files={"file": ("p.jsonl", _jsonl(_records("pool.jsonl", per_task=8)))},
                data={"name": "pool"},
            ).json()
            probes = api.post(
                "/v1/datasets", json={"name": "probes", "records": _records("probes.jsonl")}
            ).json()
            model = api.post(
                "/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"}
            ).json()
            settings = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "epochs": 1}}
            valuation = api.post(
                "/v1/valuations",
                json={
                    "model_id": model["id"],
                    "pool_dataset_id": pool["id"],
                    "probe_dataset_id": probes["id"],
                    "settings": settings,
                },
            )
            assert valuation.status_code == 202, valuation.text
            vid = valuation.json()["id"]
            deadline = time.monotonic() + 300
            while (body := api.get(f"/v1/valuations/{vid}").json())["status"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, body
                time.sleep(0.5)
            assert body["status"] == "succeeded", (
                body,
                (tmp_path / "serve.log").read_text()[-3000:],
            )
            scores = api.get(f"/v1/valuations/{vid}/scores", params={"limit": 1000}).json()
            assert scores["total"] == pool["n_records"]
    # State lives where the README says: in ./.sift of the working directory.
    assert (tmp_path / ".sift" / "sift.db").exists()
    (tenant_blobs,) = (tmp_path / ".sift" / "blobs" / "tenants").iterdir()
    assert any((tenant_blobs / "features").iterdir())
