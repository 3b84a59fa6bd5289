from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.config import Settings
from service.config import get_settings as settings_dependency


def _post(client: TestClient, name: str, source: str) -> Any:
    return client.post("/v1/models", json={"name": name, "source": source})


def test_builtin_model(client: TestClient) -> None:
    response = _post(client, "tiny", "builtin:tiny-llama")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "tiny" and body["source"] == "builtin:tiny-llama"
    assert len(body["id"]) == 32
    assert client.get(f"/v1/models/{body['id']}").json() == body


def test_unknown_builtin_lists_known(client: TestClient) -> None:
    response = _post(client, "x", "builtin:gpt-5")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "source" and "builtin:tiny-llama" in error["message"]


def test_local_path_needs_config_json(client: TestClient, tmp_path: Path) -> None:
    missing = _post(client, "a", str(tmp_path / "nope")).json()["error"]
    assert missing["field"] == "source" and "does not exist" in missing["message"]
    assert _post(client, "b", str(tmp_path)).json()["error"]["field"] == "source"
    (tmp_path / "config.json").write_text("{}")
    response = _post(client, "c", str(tmp_path) + "/")
    assert response.status_code == 201, response.text
    assert response.json()["source"] == str(tmp_path)  # stored absolute and normalized


def test_local_path_check_can_be_disabled(client: TestClient, app: Any, settings: Settings) -> None:
    app.dependency_overrides[settings_dependency] = lambda: settings.model_copy(
        update={"check_model_paths": False}
    )
    response = _post(client, "p", "./models/not-here")
    assert response.status_code == 201, response.text
    assert Path(response.json()["source"]).is_absolute()


def test_hub_ids(client: TestClient) -> None:
    assert _post(client, "m1", "meta-llama/Llama-2-7b-hf").status_code == 201
    for bad in ("llama", "a/b/c", "org/", "/", "org/na me", "org/../x", "http://x/y"):
        response = _post(client, f"bad-{bad}", bad)
        assert response.status_code == 422, bad
        assert response.json()["error"]["field"] == "source"


def test_duplicate_name_conflicts(client: TestClient) -> None:
    assert _post(client, "dup", "builtin:tiny-llama").status_code == 201
    response = _post(client, "dup", "org/other")
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "name"


def test_bad_bodies(client: TestClient) -> None:
    cases = [
        ({"source": "builtin:tiny-llama"}, "body.name"),
        ({"name": "x"}, "body.source"),
        ({"name": "", "source": "builtin:tiny-llama"}, "body.name"),
        ({"name": 3, "source": "builtin:tiny-llama"}, "body.name"),
        ({"name": "x", "source": "builtin:tiny-llama", "extra": 1}, "body.extra"),
    ]
    for body, field in cases:
        response = client.post("/v1/models", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["field"] == field


def test_list_and_unknown(client: TestClient) -> None:
    for i in range(3):
        assert _post(client, f"m{i}", "builtin:tiny-llama").status_code == 201
    page = client.get("/v1/models", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    page2 = client.get("/v1/models", params={"limit": 2, "offset": 2}).json()
    names = {m["name"] for m in page["items"] + page2["items"]}
    assert names == {"m0", "m1", "m2"}
    response = client.get("/v1/models/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_gguf_sources(client: TestClient, tmp_path: Path) -> None:
    """A .gguf file, or a folder holding exactly one, is registered as is (the worker converts
    it on first use); the API only checks the path and the file's magic bytes."""
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "m.Q4_1.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    by_file = _post(client, "g1", str(folder / "m.Q4_1.gguf"))
    assert by_file.status_code == 201, by_file.text
    assert by_file.json()["source"] == str(folder / "m.Q4_1.gguf")
    assert _post(client, "g2", str(folder)).status_code == 201
    (folder / "m.Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    two = _post(client, "g3", str(folder)).json()["error"]
    assert two["field"] == "source" and "2 GGUF files" in two["message"]
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    fake = _post(client, "g4", str(tmp_path / "fake.gguf")).json()["error"]
    assert fake["field"] == "source" and "not a GGUF file" in fake["message"]
    (tmp_path / "weights.bin").write_bytes(b"GGUF")
    other = _post(client, "g5", str(tmp_path / "weights.bin")).json()["error"]
    assert other["field"] == "source" and "not a .gguf file" in other["message"]
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _post(client, "g6", str(empty)).json()["error"]
    assert nothing["field"] == "source" and "no config.json and no .gguf" in nothing["message"]
