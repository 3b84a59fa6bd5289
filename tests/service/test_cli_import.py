"""``sift datasets import`` against a real HTTP server (uvicorn on loopback, the test app):
local files and load_from_disk folders, mapped and uploaded as streamed JSONL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import cli
from service.config import Settings, get_settings
from service.db.models import Dataset
from tests.integration.servers import free_port
from tests.service.conftest import api_key

ROWS = [
    {"question": f"What is {i} * 3?", "answer": str(3 * i), "level": i % 2, "src": "mul"}
    for i in range(1, 30)
]


@pytest.fixture()
def server(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server]]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", srv
    srv.should_exit = True
    thread.join(10)


def _idle(srv: uvicorn.Server) -> None:
    """Wait until the server has finished every request (it shares the test's session)."""
    deadline = time.monotonic() + 20
    while srv.server_state.connections or srv.server_state.tasks:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    cli.main(["datasets", "import", *argv])
    out = capsys.readouterr()
    assert "imported" in out.err
    return dict(json.loads(out.out))


def test_cli_imports_a_parquet_file(
    server: tuple[str, uvicorn.Server],
    app: FastAPI,
    db: Session,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, srv = server
    key = api_key(db)
    path = tmp_path / "mul.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=8)
    monkeypatch.setenv("SIFT_URL", base)
    monkeypatch.setenv("SIFT_API_KEY", key)
    body = _run(
        capsys,
        [
            str(path),
            "--name",
            "mul",
            "--map",
            "prompt=question",
            "--map",
            "response=answer",
            "--map",
            "subtask=src",
            "--map",
            "metadata=level",
        ],
    )
    _idle(srv)
    assert body["name"] == "mul" and body["n_records"] == len(ROWS)
    assert body["subtasks"] == {"mul": len(ROWS)}
    with TestClient(app, headers={"authorization": f"Bearer {key}"}) as client:
        records = client.get(f"/v1/datasets/{body['id']}/records", params={"limit": 2}).json()
    first = records["items"][0]
    assert first["messages"][1] == {"role": "assistant", "content": "3"}
    assert first["metadata"] == {"level": 1}


def test_cli_imports_a_load_from_disk_split(
    server: tuple[str, uvicorn.Server],
    db: Session,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, srv = server
    folder = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:20]),
            "test": datasets.Dataset.from_list(ROWS[20:]),
        }
    ).save_to_disk(str(folder))
    common = ["--map", "prompt=question", "--map", "response=answer", "--url", base]
    common += ["--api-key", api_key(db)]
    body = _run(capsys, [str(folder), "--name", "t", "--split", "test", *common])
    _idle(srv)
    assert body["n_records"] == len(ROWS) - 20
    with pytest.raises(SystemExit, match="split"):
        cli.main(["datasets", "import", str(folder), "--name", "t", *common])
    with pytest.raises(SystemExit, match="'nope'"):
        cli.main(["datasets", "import", str(folder), "--name", "t", "--split", "test",
                  "--map", "prompt=nope", "--url", base, "--api-key", "x"])  # fmt: skip


def test_a_bad_row_after_a_megabyte_stops_the_upload_and_stores_nothing(
    server: tuple[str, uvicorn.Server],
    app: FastAPI,
    settings: Settings,
    db: Session,
    tmp_path: Path,
) -> None:
    base, srv = server
    big = settings.model_copy(update={"max_upload_bytes": 64 * 1024 * 1024})
    app.dependency_overrides[get_settings] = lambda: big
    rows = [{"question": f"q{i} " + "x" * 500, "answer": "a"} for i in range(4000)]
    rows[-1]["answer"] = " "  # a blank response: the record rules refuse it
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = api_key(db)
    with pytest.raises(SystemExit, match="line 4000"):
        cli.main(["datasets", "import", str(path), "--name", "bad", "--map", "prompt=question",
                  "--map", "response=answer", "--url", base, "--api-key", key])  # fmt: skip
    _idle(srv)
    assert db.scalar(select(func.count()).select_from(Dataset)) == 0


def test_map_arguments_and_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.datasets.client_import import api_key_from_env, parse_map_args

    mapping = parse_map_args(["prompt=q", "metadata=a,b", "metadata=c", "id = k"])
    assert (mapping.prompt, mapping.id, mapping.metadata) == ("q", "k", ("a", "b", "c"))
    for bad in (["prompt"], ["prompt=q", "prompt=r"], ["prompt=q", "meta=x"], ["response=a"]):
        with pytest.raises(SystemExit, match="sift datasets import"):
            cli.main(["datasets", "import", str(tmp_path), "--name", "x", *sum(
                (["--map", m] for m in bad), [])])  # fmt: skip
    monkeypatch.delenv("SIFT_API_KEY", raising=False)
    key_file = tmp_path / "api-key"
    key_file.write_text("sift_from_file\n")
    assert api_key_from_env(None, str(key_file)) == "sift_from_file"
    monkeypatch.setenv("SIFT_API_KEY", "sift_from_env")
    assert api_key_from_env(None, str(key_file)) == "sift_from_env"
    assert api_key_from_env("sift_given", str(key_file)) == "sift_given"
