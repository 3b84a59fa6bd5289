from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.datasets.parsing import content_hash
from service.db.models import Dataset, Record
from tests.service.conftest import records


def _jsonl(items: list[Any]) -> bytes:
    return ("\n".join(json.dumps(i) for i in items) + "\n").encode()


def _upload(client: TestClient, data: bytes, name: str | None = "up") -> Any:
    form = {"name": name} if name is not None else {}
    return client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, data=form)


def _counts(db: Session) -> tuple[int, int]:
    return (
        db.scalar(select(func.count()).select_from(Dataset)) or 0,
        db.scalar(select(func.count()).select_from(Record)) or 0,
    )


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    return error


# --- create -----------------------------------------------------------------------------------


def test_upload_jsonl_both_formats(client: TestClient, db: Session) -> None:
    lines = [
        {"id": 7, "prompt": "p1", "response": "r1", "subtask": "math", "extra": [1, 2]},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ],
            "subtask": "chat",
            "metadata": {"src": "x"},
        },
        {"id": "c", "prompt": "p3", "response": "r3", "subtask": "math"},
    ]
    response = _upload(client, _jsonl(lines) + b"\n\n", name="mixed")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "mixed"
    assert body["n_records"] == 3
    assert body["n_duplicates"] == 0 and body["duplicates"] == []
    assert body["subtasks"] == {"math": 2, "chat": 1}
    assert len(body["content_hash"]) == 64

    rows = db.scalars(
        select(Record).where(Record.dataset_id == body["id"]).order_by(Record.position)
    ).all()
    assert [r.record_id for r in rows] == [
        "7",
        "h-" + content_hash(rows[1].messages)[:16],
        "c",
    ]
    assert rows[0].messages == [
        {"role": "user", "content": "p1"},
        {"role": "assistant", "content": "r1"},
    ]
    assert rows[0].raw == lines[0]  # verbatim, extra fields kept
    assert rows[1].metadata_ == {"src": "x"}
    assert rows[2].metadata_ == {}


def test_upload_json_body(client: TestClient) -> None:
    response = client.post("/v1/datasets", json={"name": "j", "records": records(4)})
    assert response.status_code == 201, response.text
    assert response.json()["n_records"] == 4


def test_content_hash_is_deterministic_and_order_sensitive(client: TestClient) -> None:
    recs = records(3)
    a = client.post("/v1/datasets", json={"name": "a", "records": recs}).json()
    b = client.post("/v1/datasets", json={"name": "b", "records": recs}).json()
    c = client.post("/v1/datasets", json={"name": "c", "records": recs[::-1]}).json()
    assert a["content_hash"] == b["content_hash"] != c["content_hash"]


def test_exact_duplicates_are_skipped_and_reported(client: TestClient) -> None:
    recs = [
        {"prompt": "p", "response": "r"},
        {"id": "x", "prompt": "q", "response": "s"},
        {"prompt": "p", "response": "r"},  # same content, same derived id
        {"id": "y", "prompt": "q", "response": "s"},  # same content as x, other id
        {"id": "x", "prompt": "q", "response": "s"},  # same id, same content
    ]
    body = client.post("/v1/datasets", json={"name": "d", "records": recs}).json()
    first = body["duplicates"][0]["duplicate_of"]
    assert first.startswith("h-")
    assert body["n_records"] == 2 and body["n_duplicates"] == 3
    assert body["duplicates"] == [
        {"index": 2, "record_id": first, "duplicate_of": first},
        {"index": 3, "record_id": "y", "duplicate_of": "x"},
        {"index": 4, "record_id": "x", "duplicate_of": "x"},
    ]


def test_same_id_different_content_is_rejected(client: TestClient, db: Session) -> None:
    recs = [
        {"id": "a", "prompt": "p", "response": "r"},
        {"id": "a", "prompt": "p", "response": "X"},
    ]
    error = _error(client.post("/v1/datasets", json={"name": "d", "records": recs}), 422)
    assert error["field"] == "records.1.id"
    assert "records.0" in error["message"]
    error = _error(_upload(client, _jsonl(recs)), 422)
    assert error["field"] == "line 2.id"
    assert _counts(db) == (0, 0)


def test_blank_response_names_line_and_field(client: TestClient) -> None:
    lines = [{"prompt": "p", "response": "r"}, {"prompt": "p2", "response": "   "}]
    error = _error(_upload(client, _jsonl(lines)), 422)
    assert error["field"] == "line 2.response"
    assert error["message"].startswith("line 2:")
    assert client.get("/v1/datasets").json()["total"] == 0


def test_prompt_only_records_are_counted(client: TestClient) -> None:
    """NICE probes may come without responses; the dataset says how many."""
    lines = [
        {"prompt": "p", "response": "r"},
        {"prompt": "p2"},
        {"prompt": "p3", "response": None},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
    ]
    response = _upload(client, _jsonl(lines))
    assert response.status_code == 201, response.text
    assert response.json()["n_prompt_only"] == 3
    records = client.get(f"/v1/datasets/{response.json()['id']}/records").json()["items"]
    assert [r["messages"][-1]["role"] for r in records] == ["assistant", "user", "user", "user"]


def test_bad_messages(client: TestClient) -> None:
    cases: list[tuple[str, Any]] = [
        ("records.0.messages.0.role", {"messages": [{"role": "system", "content": "s"}]}),
        (
            "records.0.messages.1.content",
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": ""}]},
        ),
        ("records.0.messages.0.role", {"messages": [{"role": "robot", "content": "u"}]}),
        ("records.0.messages.0.content", {"messages": [{"role": "user", "content": 3}]}),
        ("records.0.messages", {"messages": []}),
        ("records.0.messages", {"messages": [], "prompt": "p", "response": "r"}),
        ("records.0", {"text": "neither format"}),
        ("records.0", ["not", "an", "object"]),
        ("records.0.id", {"id": 1.5, "prompt": "p", "response": "r"}),
        ("records.0.id", {"id": True, "prompt": "p", "response": "r"}),
        ("records.0.subtask", {"prompt": "p", "response": "r", "subtask": 3}),
        ("records.0.metadata", {"prompt": "p", "response": "r", "metadata": [1]}),
        ("records.0.prompt", {"prompt": None, "response": "r"}),
    ]
    for expected, record in cases:
        response = client.post("/v1/datasets", json={"name": "d", "records": [record]})
        assert _error(response, 422)["field"] == expected, (expected, response.text)


def test_malformed_jsonl_line(client: TestClient, db: Session) -> None:
    data = _jsonl(records(2)) + b'{"prompt": "p", "response": \n'
    error = _error(_upload(client, data), 422)
    assert error["field"] == "line 3"
    assert "line 3" in error["message"] and "invalid JSON" in error["message"]
    assert _error(_upload(client, b'{"prompt": "p", "response": NaN}\n'), 422)["field"] == "line 1"
    assert _error(_upload(client, b"\xff\xfe garbage"), 422)["field"] == "file"
    assert _counts(db) == (0, 0)


def test_empty_uploads(client: TestClient) -> None:
    assert _error(_upload(client, b""), 422)["field"] == "file"
    assert _error(_upload(client, b"\n  \n"), 422)["field"] == "file"
    response = client.post("/v1/datasets", json={"name": "e", "records": []})
    assert _error(response, 422)["field"] == "records"


def test_missing_and_wrong_fields(client: TestClient) -> None:
    error = _error(client.post("/v1/datasets", json={"records": records(1)}), 422)
    assert error["field"] == "body.name"
    error = _error(client.post("/v1/datasets", json={"name": 5, "records": records(1)}), 422)
    assert error["field"] == "body.name"
    error = _error(client.post("/v1/datasets", json={"name": "x", "records": {"a": 1}}), 422)
    assert error["field"] == "body.records"
    response = client.post(
        "/v1/datasets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _error(response, 422)["field"] == "body"
    assert _error(_upload(client, _jsonl(records(1)), name=None), 422)["field"] == "name"
    response = client.post("/v1/datasets", data={"name": "x"}, files={"other": ("f", b"x")})
    assert _error(response, 422)["field"] == "file"
    response = client.post("/v1/datasets", content=b"x", headers={"content-type": "text/plain"})
    assert _error(response, 415)["code"] == "unsupported_media_type"


def test_oversized_upload(client: TestClient, db: Session) -> None:
    big = _jsonl(records(5000))  # limit in the test settings: 256 KiB
    assert len(big) > 256 * 1024
    assert _error(_upload(client, big), 413)["code"] == "payload_too_large"
    # Without a Content-Length (chunked), the limit is enforced while reading.
    response = client.post(
        "/v1/datasets",
        content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={"content-type": "application/json"},
    )
    assert _error(response, 413)["code"] == "payload_too_large"
    assert _counts(db) == (0, 0)


def test_rejected_upload_leaves_no_row_and_no_blob(
    client: TestClient, db: Session, tenant_blobs: BlobStore
) -> None:
    good = records(50)
    bad = [*good, {"id": "late", "prompt": "p", "response": ""}]  # the last record is invalid
    assert _error(_upload(client, _jsonl(bad)), 422)["field"] == "line 51.response"
    assert _error(client.post("/v1/datasets", json={"name": "x", "records": bad}), 422)
    assert _counts(db) == (0, 0)
    assert tenant_blobs.list_keys() == []


# --- read, list, records, delete ----------------------------------------------------------------


def test_get_and_list_pagination(
    client: TestClient, make_dataset: Callable[..., dict[str, Any]]
) -> None:
    created = [make_dataset(1, name=f"d{i}") for i in range(5)]
    got = client.get(f"/v1/datasets/{created[0]['id']}").json()
    assert got == created[0]

    seen = []
    for offset in (0, 2, 4):
        page = client.get("/v1/datasets", params={"limit": 2, "offset": offset}).json()
        assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == offset
        seen += [d["id"] for d in page["items"]]
    assert sorted(seen) == sorted(d["id"] for d in created)
    assert client.get("/v1/datasets", params={"offset": 10}).json()["items"] == []

    assert _error(client.get("/v1/datasets", params={"limit": 0}), 422)["field"] == "query.limit"
    assert _error(client.get("/v1/datasets", params={"limit": 51}), 422)["field"] == "query.limit"
    assert _error(client.get("/v1/datasets", params={"offset": -1}), 422)["field"] == "query.offset"
    assert _error(client.get("/v1/datasets", params={"limit": "x"}), 422)["field"] == "query.limit"


def test_unknown_dataset(client: TestClient) -> None:
    assert _error(client.get("/v1/datasets/nope"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/datasets/nope/records"), 404)["code"] == "not_found"
    assert _error(client.delete("/v1/datasets/nope"), 404)["code"] == "not_found"


def test_records_in_order_paged(client: TestClient) -> None:
    recs = records(7, subtask="s")
    recs[3]["metadata"] = {"k": 1}
    ds = client.post("/v1/datasets", json={"name": "r", "records": recs}).json()
    page = client.get(f"/v1/datasets/{ds['id']}/records", params={"limit": 3, "offset": 2}).json()
    assert page["total"] == 7 and page["limit"] == 3 and page["offset"] == 2
    assert [r["record_id"] for r in page["items"]] == ["r2", "r3", "r4"]
    assert [r["position"] for r in page["items"]] == [2, 3, 4]
    assert page["items"][1] == {
        "record_id": "r3",
        "position": 3,
        "subtask": "s",
        "messages": [
            {"role": "user", "content": "question r3?"},
            {"role": "assistant", "content": "answer 3"},
        ],
        "metadata": {"k": 1},
    }


def test_delete_dataset_cascades_records(
    client: TestClient, db: Session, make_dataset: Callable[..., dict[str, Any]]
) -> None:
    ds = make_dataset(4)
    response = client.delete(f"/v1/datasets/{ds['id']}")
    assert response.status_code == 204 and response.content == b""
    assert _counts(db) == (0, 0)
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 404


def test_delete_dataset_in_use_conflicts(
    client: TestClient, make_dataset: Callable[..., dict[str, Any]], make_valuation: Any
) -> None:
    pool = make_dataset(3, name="pool")
    valuation = make_valuation(pool=pool)
    for dataset_id in (pool["id"], valuation["probe_dataset_id"]):
        error = _error(client.delete(f"/v1/datasets/{dataset_id}"), 409)
        assert valuation["id"] in error["message"]
    assert client.get(f"/v1/datasets/{pool['id']}").status_code == 200
