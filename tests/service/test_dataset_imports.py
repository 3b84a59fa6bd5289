"""POST /v1/datasets/import: tables with a column mapping, uploaded or read server-side under
the operator's import roots; bad mappings and forbidden paths are 422s naming the field, and a
refused import leaves nothing behind."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.config import Settings, get_settings
from service.datasets.imports import ColumnMapping, open_path
from service.db.models import Dataset, Record
from service.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]

ROWS: list[dict[str, Any]] = [
    {"q": f"What is {i} + {i}?", "a": 2 * i, "level": i % 3, "src": "arith", "k": f"k{i}"}
    for i in range(1, 8)
]
MAPPING = {"prompt": "q", "response": "a", "id": "k", "subtask": "src", "metadata": ["level"]}


def _import(
    client: TestClient,
    data: bytes,
    filename: str,
    mapping: Any = MAPPING,
    name: str = "imp",
    fmt: str | None = None,
) -> Any:
    form = {"name": name, "mapping": mapping if isinstance(mapping, str) else json.dumps(mapping)}
    if fmt is not None:
        form["format"] = fmt
    return client.post("/v1/datasets/import", files={"file": (filename, data)}, data=form)


def _records(client: TestClient, dataset_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/datasets/{dataset_id}/records", params={"limit": 50})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _nothing_stored(db: Session) -> None:
    assert db.scalar(select(func.count()).select_from(Dataset)) == 0
    assert db.scalar(select(func.count()).select_from(Record)) == 0


def _check_imported(client: TestClient, response: Any, level: Any = 1) -> None:
    n = len(ROWS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["n_records"] == n and body["subtasks"] == {"arith": n}
    records = _records(client, body["id"])
    assert [r["record_id"] for r in records] == [row["k"] for row in ROWS[:n]]
    first = records[0]
    assert first["messages"] == [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},  # an integer cell written out as text
    ]
    assert first["metadata"] == {"level": level}


def _parquet(rows: list[dict[str, Any]], row_group_size: int = 2) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=row_group_size)
    return out.getvalue()


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- uploads ------------------------------------------------------------------------------------


def test_parquet_upload_is_read_by_row_groups(client: TestClient) -> None:
    data = _parquet(ROWS, row_group_size=2)
    assert pq.ParquetFile(io.BytesIO(data)).num_row_groups == 4
    _check_imported(client, _import(client, data, "train.parquet"))


def test_csv_upload_with_quoted_newlines_and_gzip(client: TestClient) -> None:
    rows = [dict(r) for r in ROWS]
    rows[1]["q"] = 'What is 2 + 2?\nAnswer "briefly", please.'
    response = _import(client, _csv(rows), "train.csv")
    assert response.status_code == 201, response.text
    records = _records(client, response.json()["id"])
    assert records[1]["messages"][0]["content"] == rows[1]["q"]
    assert records[0]["metadata"] == {"level": "1"}  # CSV cells are text
    response = _import(client, gzip.compress(_csv(ROWS)), "t.csv.gz", name="gz")
    _check_imported(client, response, level="1")


def test_jsonl_and_gzipped_jsonl_uploads(client: TestClient) -> None:
    _check_imported(client, _import(client, _jsonl(ROWS), "train.jsonl"))
    response = _import(client, gzip.compress(_jsonl(ROWS)), "train.jsonl.gz", name="gz")
    assert response.status_code == 201, response.text
    assert response.json()["n_records"] == len(ROWS)


def test_messages_column_and_explicit_format(client: TestClient) -> None:
    rows = [
        {
            "conversation": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {i}."},
                {"role": "assistant", "content": str(i)},
            ],
            "tags": ["a", "b"],
        }
        for i in range(3)
    ]
    # a parquet file with no telling name: format given
    response = _import(
        client,
        _parquet(rows),
        "blob",
        {"messages": "conversation", "metadata": ["tags"]},
        fmt="parquet",
    )
    assert response.status_code == 201, response.text
    records = _records(client, response.json()["id"])
    assert records[2]["messages"][-1] == {"role": "assistant", "content": "2"}
    assert records[2]["metadata"] == {"tags": ["a", "b"]}


def test_dotted_columns_reach_into_nested_objects(client: TestClient, db: Session) -> None:
    rows = [{"doc": {"question": f"Q{i}?", "gold": {"text": f"A{i}"}}, "n": i} for i in range(3)]
    mapping = {"prompt": "doc.question", "response": "doc.gold.text", "metadata": ["n"]}
    for data, filename in [(_jsonl(rows), "nested.jsonl"), (_parquet(rows), "nested.parquet")]:
        response = _import(client, data, filename, mapping, name=filename)
        assert response.status_code == 201, response.text
        records = _records(client, response.json()["id"])
        assert records[2]["messages"] == [
            {"role": "user", "content": "Q2?"},
            {"role": "assistant", "content": "A2"},
        ]
    response = _import(client, _jsonl(rows), "t.jsonl", {"prompt": "docs.question"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "mapping.prompt"
    assert "'docs.question'" in response.json()["error"]["message"]


def test_empty_response_cells_make_prompt_only_records(client: TestClient) -> None:
    rows: list[dict[str, Any]] = [{"q": "Tell a joke.", "a": None}, {"q": "Prime?", "a": "7"}]
    response = _import(client, _parquet(rows), "p.parquet", {"prompt": "q", "response": "a"})
    assert response.status_code == 201, response.text
    assert response.json()["n_prompt_only"] == 1


@pytest.mark.parametrize(
    ("mapping", "field", "says"),
    [
        ({"prompt": "q", "response": "answer"}, "mapping.response", "'answer'"),
        ({"prompt": "q", "metadata": ["level", "nope"]}, "mapping.metadata.1", "'nope'"),
        ({"prompt": "q", "meta": ["level"]}, "mapping.meta", "not a Sift record field"),
        ({"response": "a"}, "mapping", "prompt"),
        ({"messages": "q", "prompt": "q"}, "mapping.messages", "cannot be combined"),
        ({"prompt": "q", "metadata": "level"}, "mapping.metadata", "list"),
        ("{not json", "mapping", "not valid JSON"),
    ],
)
def test_bad_mappings_are_422s_naming_the_field(
    client: TestClient, db: Session, mapping: Any, field: str, says: str
) -> None:
    response = _import(client, _parquet(ROWS), "t.parquet", mapping)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert says in error["message"], error
    _nothing_stored(db)


def test_a_bad_row_late_in_the_file_leaves_nothing(client: TestClient, db: Session) -> None:
    rows = [dict(r) for r in ROWS] * 200  # two insert batches before the bad row
    rows = [{**r, "k": f"k{i}"} for i, r in enumerate(rows)]
    rows[-1] = {**rows[-1], "q": None}
    response = _import(client, _parquet(rows, row_group_size=500), "t.parquet")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == f"row {len(rows)}.q"
    _nothing_stored(db)


def test_a_row_the_record_rules_refuse_names_it(client: TestClient, db: Session) -> None:
    rows = [{"q": "hi", "m": {"x": 1}}, {"q": "ok", "m": {"x": "\x00"}}]
    response = _import(client, _jsonl(rows), "t.jsonl", {"prompt": "q", "metadata": ["m"]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "line 2.metadata.m.x"
    _nothing_stored(db)


def test_compressed_records_count_against_the_upload_limit(
    client: TestClient, db: Session, settings: Settings
) -> None:
    rows = [{"q": f"{i} " + "x" * 1000, "a": "y"} for i in range(400)]  # ~400 KB of records
    data = gzip.compress(_jsonl(rows))
    assert len(data) < settings.max_upload_bytes
    response = _import(client, data, "t.jsonl.gz", {"prompt": "q", "response": "a"})
    assert response.status_code == 413, response.text
    _nothing_stored(db)


def test_unknown_format_and_unreadable_files(client: TestClient, db: Session) -> None:
    response = _import(client, _jsonl(ROWS), "data.bin")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "format"
    response = _import(client, b"not parquet at all", "t.parquet")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"
    response = _import(client, b"\xff\xfe,q\n1,2\n", "t.csv")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "file"
    response = client.post(
        "/v1/datasets/import", files={"file": ("t.jsonl", _jsonl(ROWS))}, data={"name": "x"}
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "mapping"
    _nothing_stored(db)


# --- server-side sources ------------------------------------------------------------------------


@pytest.fixture()
def use_roots(app: FastAPI, settings: Settings) -> Callable[..., Settings]:
    def use(roots: str, **more: Any) -> Settings:
        changed = settings.model_copy(update={"import_roots": roots, **more})
        app.dependency_overrides[get_settings] = lambda: changed
        return changed

    return use


def _server_import(client: TestClient, source: dict[str, Any], mapping: Any = MAPPING) -> Any:
    return client.post(
        "/v1/datasets/import", json={"name": "srv", "source": source, "mapping": mapping}
    )


def _disk_dataset(folder: Path, rows: list[dict[str, Any]] = ROWS) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def test_server_side_imports_are_refused_without_roots(client: TestClient, tmp_path: Path) -> None:
    folder = _disk_dataset(tmp_path / "ds")
    response = _server_import(client, {"path": str(folder)})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "body.source.path" and "SIFT_IMPORT_ROOTS" in error["message"]


def test_load_from_disk_folders_and_files_under_a_root(
    client: TestClient, tmp_path: Path, use_roots: Callable[..., Settings]
) -> None:
    root = tmp_path / "root"
    _disk_dataset(root / "arith")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:5]),
            "test": datasets.Dataset.from_list(ROWS[5:]),
        }
    ).save_to_disk(str(root / "dict"))
    (root / "files").mkdir()
    (root / "files" / "t.parquet").write_bytes(_parquet(ROWS))
    (root / "files" / "t.csv.gz").write_bytes(gzip.compress(_csv(ROWS)))
    use_roots(f"{tmp_path / 'elsewhere'},{root}")

    _check_imported(client, _server_import(client, {"path": "arith"}))
    _check_imported(client, _server_import(client, {"path": str(root / "arith")}))
    _check_imported(client, _server_import(client, {"path": "files/t.parquet"}))
    response = _server_import(client, {"path": "files/t.csv.gz", "format": "csv"})
    _check_imported(client, response, level="1")
    response = _server_import(client, {"path": "dict", "split": "test"})
    assert response.status_code == 201, response.text
    assert response.json()["n_records"] == 2

    for source, field in [
        ({"path": "dict"}, "body.source.split"),  # two splits: which one?
        ({"path": "dict", "split": "dev"}, "body.source.split"),
        ({"path": "arith", "split": "train"}, "body.source.split"),
        ({"path": "files/t.parquet", "format": "hf_disk"}, "body.source.path"),
        ({"path": "arith", "format": "csv"}, "body.source.path"),
        ({"path": "nope"}, "body.source.path"),
        ({"path": "arith", "hub": "x/y"}, "body.source"),
    ]:
        response = _server_import(client, source)
        assert response.status_code == 422, (source, response.text)
        assert response.json()["error"]["field"] == field, (source, response.text)
    response = _server_import(client, {"path": "arith"}, {"prompt": "q", "response": "gone"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body.mapping.response"
    assert "'gone'" in response.json()["error"]["message"]


def test_paths_that_escape_the_root_are_refused(
    client: TestClient, db: Session, tmp_path: Path, use_roots: Callable[..., Settings]
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    _disk_dataset(outside / "secret")
    (outside / "secret.jsonl").write_bytes(_jsonl(ROWS))
    os.symlink(outside / "secret.jsonl", root / "link.jsonl")  # a link leading out
    os.symlink(outside / "secret", root / "linked-folder")
    inner = _disk_dataset(root / "inner")  # a folder holding a link that leads out
    os.symlink(outside / "secret.jsonl", inner / "extra.jsonl")
    forged = _disk_dataset(root / "forged")  # state.json naming a data file outside
    state = json.loads((forged / "state.json").read_text())
    state["_data_files"] = [{"filename": str(outside / "secret" / "data-00000-of-00001.arrow")}]
    (forged / "state.json").write_text(json.dumps(state))
    os.mkfifo(root / "pipe.jsonl")  # would block a reader forever
    use_roots(str(root))

    for path in [
        "pipe.jsonl",
        "../outside/secret.jsonl",
        str(outside / "secret.jsonl"),
        "link.jsonl",
        "linked-folder",
        "inner",
        "forged",
        "/etc/passwd",
        "/",
    ]:
        response = _server_import(client, {"path": path})
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["field"] == "body.source.path", (path, error)
        assert "import root" in error["message"], (path, error)
    _nothing_stored(db)


def test_a_root_per_tenant(
    make_client: Callable[..., TestClient], tmp_path: Path, use_roots: Callable[..., Settings]
) -> None:
    a, b = make_client("team-a"), make_client("team-b")
    a_id = a.get("/v1/me").json()["tenant_id"]
    _disk_dataset(tmp_path / a_id / "mine")
    use_roots(str(tmp_path / "{tenant_id}"))
    assert _server_import(a, {"path": "mine"}).status_code == 201
    for path in ["mine", f"../{a_id}/mine", str(tmp_path / a_id / "mine")]:
        response = _server_import(b, {"path": path})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["field"] == "body.source.path"


def test_the_hub_is_off_by_default(client: TestClient, use_roots: Callable[..., Settings]) -> None:
    response = _server_import(client, {"hub": "openai/gsm8k", "config": "main", "split": "test"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "body.source.hub" and "SIFT_IMPORT_HUB" in error["message"]


def test_root_settings_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        Settings(import_roots="/data,relative/dir")
    settings = Settings(import_roots=" /data/shared , /data/{tenant_id} ,")
    assert settings.import_root_list("t1") == ["/data/shared", "/data/t1"]


def test_mapping_refuses_binary_cells() -> None:
    mapping = ColumnMapping.parse({"prompt": "q", "metadata": ["blob"]})
    with pytest.raises(InvalidInput) as caught:
        mapping.record("row 1", {"q": "x", "blob": b"\x00\x01"})
    assert caught.value.field == "row 1.blob"


def test_load_from_disk_imports_no_torch(tmp_path: Path) -> None:
    """The API process reads load_from_disk folders itself: ``datasets`` must bring no torch."""
    folder = _disk_dataset(tmp_path / "ds")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import service.main\n"
        "from service.datasets.imports import ColumnMapping, open_path, read_mapped\n"
        f"source = open_path(Path({str(folder)!r}), 'auto', None)\n"
        f"mapping = ColumnMapping.parse({MAPPING!r})\n"
        "n = sum(1 for _ in read_mapped(source, mapping))\n"
        "print('ROWS', n, 'datasets' in sys.modules)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "assert not heavy, heavy\n"
    )
    env = {"PATH": "/usr/bin:/bin", "SIFT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ROWS {len(ROWS)} True" in result.stdout


def test_open_path_reads_every_format_the_same(tmp_path: Path) -> None:
    """The readers the CLI uses: every format gives the same rows for the same table."""
    files = {
        "t.parquet": _parquet(ROWS),
        "t.jsonl": _jsonl(ROWS),
        "t.jsonl.gz": gzip.compress(_jsonl(ROWS)),
        "t.csv": _csv([{k: str(v) for k, v in r.items()} for r in ROWS]),
    }
    mapping = ColumnMapping.parse({"prompt": "q", "response": "a", "id": "k"})
    seen = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        source = open_path(tmp_path / name, "auto", None)
        try:
            seen.append([mapping.record(loc, row) for loc, row in source.read(mapping.columns())])
        finally:
            source.close()
    source = open_path(_disk_dataset(tmp_path / "disk"), "auto", None)
    seen.append([mapping.record(loc, row) for loc, row in source.read(mapping.columns())])
    assert all(s == seen[0] for s in seen), seen
    assert seen[0][0] == {"prompt": "What is 1 + 1?", "response": "2", "id": "k1"}
