"""The embedded default — SQLite, a local blob folder, an in-process worker — runs the same
valuation path as production, started exactly as the README says (`sift serve`)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.embedded import VALUATION_SETTINGS, embedded_sift, finished, start_valuation
from tests.integration.test_valuation_e2e import _jsonl, _records


def test_sift_serve_embedded_values_a_pool(tmp_path: Path) -> None:
    with embedded_sift(tmp_path) as sift:
        assert sift.proc.poll() is None
        # The first start made an admin key of tenant "local", printed it and kept it 0600.
        key_file = tmp_path / ".sift" / "api-key"
        key = key_file.read_text().strip()
        assert key == sift.api_key
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key in (tmp_path / "serve.log").read_text()
        assert httpx.get(f"{sift.url}/v1/datasets").status_code == 401
        with sift.client() as api:
            assert api.get("/v1/me").json()["tenant_name"] == "local"
            vid, pool = start_valuation(
                api,
                _jsonl(_records("pool.jsonl", per_task=8)),
                _records("probes.jsonl"),
                VALUATION_SETTINGS,
            )
            body = finished(api, vid, timeout=300)
            assert body["status"] == "succeeded", (body, sift.log_tail())
            scores = api.get(f"/v1/valuations/{vid}/scores", params={"limit": 1000}).json()
            assert scores["total"] == pool["n_records"]
    # State lives where the README says: in ./.sift of the working directory.
    assert (tmp_path / ".sift" / "sift.db").exists()
    (tenant_blobs,) = (tmp_path / ".sift" / "blobs" / "tenants").iterdir()
    assert any((tenant_blobs / "features").iterdir())
