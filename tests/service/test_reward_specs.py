from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient


def _post(client: TestClient, name: str, spec: dict[str, Any]) -> Any:
    return client.post("/v1/reward-specs", json={"name": name, "spec": spec})


@pytest.mark.parametrize(
    ("spec", "needs_label"),
    [
        ({"kind": "exact_match"}, True),
        ({"kind": "contains", "ignore_case": False}, True),
        ({"kind": "regex", "pattern": r"answer is (\-?\d+)"}, True),
        ({"kind": "numeric", "rel_tol": 0.01}, True),
        ({"kind": "python_tests", "timeout_s": 5}, False),
        ({"kind": "http_judge", "url": "http://127.0.0.1:9/score", "retries": 1}, False),
    ],
)
def test_create_read_and_list_each_kind(
    client: TestClient, spec: dict[str, Any], needs_label: bool
) -> None:
    response = _post(client, f"r-{spec['kind']}", spec)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == spec["kind"] and body["needs_label"] is needs_label
    assert {k: body["spec"][k] for k in spec} == spec  # given fields kept, defaults filled
    assert client.get(f"/v1/reward-specs/{body['id']}").json() == body
    listed = client.get("/v1/reward-specs").json()
    assert listed["total"] == 1 and listed["items"] == [body]


def test_python_tests_defaults_are_filled_in(client: TestClient) -> None:
    spec = _post(client, "he", {"kind": "python_tests"}).json()["spec"]
    assert spec == {
        "kind": "python_tests",
        "program": "prompt+response",
        "timeout_s": 10.0,
        "cpu_time_s": 10,
        "memory_mb": 1024,
        "max_processes": 8,
        "max_file_mb": 16,
    }


def test_reward_model_needs_an_absolute_local_model(client: TestClient, tmp_path: Path) -> None:
    relative = _post(client, "rm1", {"kind": "reward_model", "model_path": "models/rm"})
    assert relative.status_code == 422 and relative.json()["error"]["field"] == "spec.model_path"
    missing = _post(client, "rm2", {"kind": "reward_model", "model_path": str(tmp_path)})
    assert missing.status_code == 422 and "config.json" in missing.json()["error"]["message"]
    (tmp_path / "config.json").write_text("{}")
    ok = _post(client, "rm3", {"kind": "reward_model", "model_path": str(tmp_path)})
    assert ok.status_code == 201, ok.text
    assert ok.json()["needs_label"] is False


@pytest.mark.parametrize(
    ("spec", "field_part"),
    [
        ({"kind": "bleu"}, "kind"),
        ({"kind": "regex", "pattern": "(unclosed"}, "pattern"),
        ({"kind": "regex"}, "pattern"),
        ({"kind": "numeric", "abs_tol": -1}, "abs_tol"),
        ({"kind": "python_tests", "timeout_s": 0}, "timeout_s"),
        ({"kind": "http_judge", "url": "ftp://judge"}, "url"),
        ({"kind": "exact_match", "surprise": 1}, "surprise"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(
    client: TestClient, spec: dict[str, Any], field_part: str
) -> None:
    response = _post(client, "bad", spec)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field_part in (error["field"] or "") + error["message"], error
    assert client.get("/v1/reward-specs").json()["total"] == 0  # nothing half-written


def test_duplicate_name_conflicts_and_unknown_id_is_404(client: TestClient) -> None:
    assert _post(client, "same", {"kind": "contains"}).status_code == 201
    dup = _post(client, "same", {"kind": "exact_match"})
    assert dup.status_code == 409 and dup.json()["error"]["field"] == "name"
    missing = client.get("/v1/reward-specs/" + "0" * 32)
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/score",
        "https://0x7f000001/score",
        "https://[::ffff:10.0.0.1]/score",
        "https://redis:6379/",
        "http://judge.example.com/score",  # plain http to a host not allowlisted
        "http://10.0.0.5/score",
    ],
)
def test_judge_urls_the_worker_may_not_call_are_refused(client: TestClient, url: str) -> None:
    response = _post(client, "ssrf", {"kind": "http_judge", "url": url})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "spec.url"
    assert client.get("/v1/reward-specs").json()["total"] == 0
    ok = _post(client, "public", {"kind": "http_judge", "url": "https://judge.example.com/s"})
    assert ok.status_code == 201, ok.text
