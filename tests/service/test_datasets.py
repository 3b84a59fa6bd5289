from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import uploads
from service.blobs import BlobStore
from service.config import Settings, get_settings
from service.datasets import parsing, repository
from service.datasets.parsing import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, content_hash
from service.db.models import Dataset, Record
from service.errors import InvalidInput
from tests.service.conftest import records


def _jsonl(items: list[Any]) -> bytes:
    return ("\n".join(json.dumps(i) for i in items) + "\n").encode()


def _upload(client: TestClient, data: bytes, name: str | None = "up") -> Any:
    form = {"name": name} if name is not None else {}
    return client.post("/v1/datasets", files={"file": ("d.jsonl", data)}, data=form)


MULTIPART = {"content-type": "multipart/form-data; boundary=b"}


def _multipart_body(parts: list[tuple[str, str | None, bytes]], close: bool = True) -> bytes:
    """A hand-made multipart body: parts in this order, optionally without its closing
    boundary."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + b"--b--\r\n" if close else body


def _multipart(
    client: TestClient, parts: list[tuple[str, str | None, bytes]], close: bool = True
) -> Any:
    return client.post("/v1/datasets", content=_multipart_body(parts, close), headers=MULTIPART)


def _streamed(app: FastAPI, client: TestClient, body: bytes, chunk: int) -> httpx.Response:
    """POST ``body`` in ``chunk``-byte ASGI messages without a Content-Length, as a slow
    client's chunked upload arrives (TestClient would join it into one message)."""

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            headers = {**MULTIPART, "authorization": client.headers["authorization"]}
            return await api.post("/v1/datasets", content=pieces(), headers=headers)

    return asyncio.run(post())


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
        {"id": 7, "prompt": "p1", "response": "r1", "subtask": "math", "metadata": {"x": [1, 2]}},
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
    assert rows[0].raw == lines[0]  # verbatim
    assert rows[0].metadata_ == {"x": [1, 2]}
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
        ("records.0", {"id": "neither format"}),
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
    error = _error(response, 422)
    assert error["field"] == "other" and "'name' and 'file'" in error["message"]
    response = _multipart(client, [("name", None, b"x")])
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


def test_json_body_has_the_smaller_limit(
    app: FastAPI, client: TestClient, db: Session, settings: Settings
) -> None:
    """The JSON form is held in memory, so it stops at SIFT_MAX_JSON_UPLOAD_BYTES; the same
    records as a JSONL file stream in under the larger limit."""
    small = settings.model_copy(update={"max_json_upload_bytes": 10_000})
    app.dependency_overrides[get_settings] = lambda: small
    recs = records(300)
    error = _error(client.post("/v1/datasets", json={"name": "j", "records": recs}), 413)
    assert "SIFT_MAX_JSON_UPLOAD_BYTES" in error["message"] and "JSONL" in error["message"]
    assert _counts(db) == (0, 0)
    response = _upload(client, _jsonl(recs))
    assert response.status_code == 201 and response.json()["n_records"] == 300


def test_rejected_upload_leaves_no_row_and_no_blob(
    client: TestClient, db: Session, tenant_blobs: BlobStore
) -> None:
    good = records(50)
    bad = [*good, {"id": "late", "prompt": "p", "response": ""}]  # the last record is invalid
    assert _error(_upload(client, _jsonl(bad)), 422)["field"] == "line 51.response"
    assert _error(client.post("/v1/datasets", json={"name": "x", "records": bad}), 422)
    assert _counts(db) == (0, 0)
    assert tenant_blobs.list_keys() == []


# --- record rules: every bad input is a 422 naming the record and the key ----------------------


def test_unknown_record_fields_are_refused(client: TestClient, db: Session) -> None:
    line = {"prompt": "p", "response": "r", "meta": {"source": "x"}}
    error = _error(_upload(client, _jsonl([*records(2), line])), 422)
    assert error["field"] == "line 3.meta"
    for word in ("'meta'", "id, prompt, response, messages, subtask, metadata"):
        assert word in error["message"], error
    body = {"name": "j", "records": [{"prompt": "p", "response": "r", "label": 1, "x": 2}]}
    error = _error(client.post("/v1/datasets", json=body), 422)
    assert error["field"] == "records.0.label" and "'x'" in error["message"]
    assert _counts(db) == (0, 0)


BAD_STRINGS: list[tuple[str, bytes, str, str]] = [
    # (case, the record's JSON text, field, words)
    ("lone surrogate", rb'{"prompt": "p", "response": "r\ud800"}', "response", "U+D800"),
    ("low surrogate", rb'{"prompt": "p\udc00", "response": "r"}', "prompt", "U+DC00"),
    (
        "in metadata",
        rb'{"prompt": "p", "response": "r", "metadata": {"a": [1, {"b": "\ud83d"}]}}',
        "metadata.a.1.b",
        "lone surrogate",
    ),
    (
        "in a key",
        rb'{"prompt": "p", "response": "r", "metadata": {"k\udfff": 1}}',
        "metadata.k\\udfff",
        "lone surrogate",
    ),
    ("NUL", rb'{"prompt": "p", "response": "r\u0000"}', "response", "NUL"),
    (
        "NUL in messages",
        rb'{"messages": [{"role": "user", "content": "\u0000"}]}',
        "messages.0.content",
        "NUL",
    ),
    ("NUL in an id", rb'{"id": "a\u0000", "prompt": "p", "response": "r"}', "id", "NUL"),
]


@pytest.mark.parametrize(
    ("text", "field", "word"), [c[1:] for c in BAD_STRINGS], ids=[c[0] for c in BAD_STRINGS]
)
def test_nul_and_lone_surrogates_are_refused(
    client: TestClient, db: Session, text: bytes, field: str, word: str
) -> None:
    error = _error(_upload(client, _jsonl(records(1)) + text + b"\n"), 422)
    assert error["field"] == f"line 2.{field}", error
    assert word in error["message"], error
    body = b'{"name": "j", "records": [{"prompt": "ok", "response": "ok"}, ' + text + b"]}"
    response = client.post(
        "/v1/datasets", content=body, headers={"content-type": "application/json"}
    )
    assert _error(response, 422)["field"] == f"records.1.{field}"
    assert _counts(db) == (0, 0)


def test_surrogate_pairs_and_escapes_are_fine(client: TestClient) -> None:
    """An escaped emoji is a valid pair; a literal backslash-u0000 is text, not NUL."""
    line = rb'{"prompt": "smile \ud83d\ude00", "response": "a \\u0000 b", "metadata": {}}'
    response = _upload(client, line + b"\n")
    assert response.status_code == 201, response.text
    record = client.get(f"/v1/datasets/{response.json()['id']}/records").json()["items"][0]
    assert record["messages"][0]["content"] == "smile \U0001f600"
    assert record["messages"][1]["content"] == "a \\u0000 b"


def test_nul_or_surrogate_in_the_name(client: TestClient, db: Session) -> None:
    response = client.post(
        "/v1/datasets",
        content=b'{"name": "a\\u0000", "records": [{"prompt": "p", "response": "r"}]}',
        headers={"content-type": "application/json"},
    )
    assert _error(response, 422)["field"] == "body.name"
    response = _multipart(client, [("name", None, b"a\0b"), ("file", "d", _jsonl(records(1)))])
    assert _error(response, 422)["field"] == "name"
    assert _counts(db) == (0, 0)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_metadata_nesting_limit(client: TestClient, db: Session) -> None:
    ok = {"prompt": "p", "response": "r", "metadata": _nested(MAX_METADATA_DEPTH)}
    assert _upload(client, _jsonl([ok])).status_code == 201
    too_deep = {"prompt": "p", "response": "r", "metadata": _nested(MAX_METADATA_DEPTH + 1)}
    error = _error(_upload(client, _jsonl([too_deep])), 422)
    assert error["field"] == "line 1.metadata" and str(MAX_METADATA_DEPTH) in error["message"]
    error = _error(client.post("/v1/datasets", json={"name": "j", "records": [too_deep]}), 422)
    assert error["field"] == "records.0.metadata"


def test_nesting_too_deep_to_parse_is_a_422(client: TestClient, db: Session) -> None:
    """100,000 levels: json.loads gives up (RecursionError); still a 422 naming the key."""
    deep = b"[" * 100_000 + b"]" * 100_000
    line = b'{"prompt": "p", "response": "r", "metadata": {"a": ' + deep + b"}}"
    error = _error(_upload(client, _jsonl(records(2)) + line + b"\n"), 422)
    assert error["field"] == "line 3.metadata" and "nested too deeply" in error["message"]
    body = b'{"name": "j", "records": [{"prompt": "p", "response": "r"}, ' + line + b"]}"
    response = client.post(
        "/v1/datasets", content=body, headers={"content-type": "application/json"}
    )
    assert _error(response, 422)["field"] == "records.1.metadata"
    assert _counts(db) == (0, 0)


def test_metadata_size_limit(client: TestClient, db: Session) -> None:
    big = {"prompt": "p", "response": "r", "metadata": {"blob": "x" * MAX_METADATA_BYTES}}
    error = _error(_upload(client, _jsonl([big])), 422)
    assert error["field"] == "line 1.metadata" and str(MAX_METADATA_BYTES) in error["message"]
    assert _counts(db) == (0, 0)


def test_line_longer_than_a_record_may_be(
    client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parsing, "MAX_RECORD_BYTES", 1000)
    long = {"prompt": "p" * 2000, "response": "r"}
    error = _error(_upload(client, _jsonl([*records(1), long])), 422)
    assert error["field"] == "line 2" and "1000 bytes" in error["message"]
    # Also when the line never ends: refused before it is buffered whole.
    error = _error(_upload(client, _jsonl(records(1)) + b'{"prompt": "' + b"p" * 5000), 422)
    assert error["field"] == "line 2"
    assert _counts(db) == (0, 0)


def test_invalid_bodies_are_422s(client: TestClient, db: Session) -> None:
    json_headers = {"content-type": "application/json"}
    for body in (b"{not json", b'{"name": "x", "records": [NaN]}', b"\xff\xfe", b""):
        response = client.post("/v1/datasets", content=body, headers=json_headers)
        assert _error(response, 422)["field"] == "body", body
    file = ("file", "d.jsonl", _jsonl(records(3)))
    truncated = _multipart(client, [("name", None, b"x"), file], close=False)
    error = _error(truncated, 422)
    assert error["field"] == "body" and "truncated" in error["message"]
    no_boundary = client.post(
        "/v1/datasets", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert _error(no_boundary, 422)["field"] == "body"
    twice = _multipart(client, [("name", None, b"x"), file, file])
    assert _error(twice, 422)["field"] == "file"
    long_name = _multipart(client, [("name", None, b"n" * 201), file])
    assert _error(long_name, 422)["field"] == "name"
    assert _counts(db) == (0, 0)


# --- streaming --------------------------------------------------------------------------------


def test_name_may_follow_the_file(client: TestClient) -> None:
    response = _multipart(
        client, [("file", "d.jsonl", _jsonl(records(3))), ("name", None, b"late")]
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "late" and response.json()["n_records"] == 3


def _mixed_items(n: int, seed: int) -> list[dict[str, Any]]:
    """Records with exact duplicates (same id or same content) scattered through."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        if items and roll < 0.15:
            items.append(dict(rng.choice(items)))  # the same record again
        elif items and roll < 0.25:
            other = rng.choice(items)  # same content, another (or no) id
            twin = {k: v for k, v in other.items() if k != "id"}
            if rng.random() < 0.5:
                twin["id"] = f"twin-{i}"
            items.append(twin)
        elif roll < 0.35:
            items.append({"prompt": f"q{i}", "response": f"a{i}", "subtask": f"s{i % 3}"})
        else:
            items.append({"id": i, "prompt": f"q{i}", "response": f"a{i}"})
    return items


def test_streamed_upload_matches_the_in_memory_reference(
    app: FastAPI, client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small chunks and batches, so records are inserted across many batches as they stream;
    the result is what parse_records computes on the whole upload at once."""
    monkeypatch.setattr(uploads, "CHUNK_BYTES", 997)
    monkeypatch.setattr(parsing, "BATCH_RECORDS", 7)
    items = _mixed_items(300, seed=1)
    reference = parsing.parse_records(parsing.parse_jsonl(_jsonl(items)))
    parts = [("name", None, b"s"), ("file", "d.jsonl", _jsonl(items))]
    body = _streamed(app, client, _multipart_body(parts), 500)
    assert body.status_code == 201, body.text
    got = body.json()
    assert got["content_hash"] == reference.content_hash
    assert got["duplicates"] == reference.duplicates and got["n_duplicates"] > 30
    assert got["n_records"] == len(reference.records)
    rows = db.scalars(
        select(Record).where(Record.dataset_id == got["id"]).order_by(Record.position)
    ).all()
    assert [(r.record_id, r.content_hash, r.raw) for r in rows] == [
        (r.record_id, r.content_hash, r.raw) for r in reference.records
    ]
    assert [r.position for r in rows] == list(range(len(rows)))
    subtasks: dict[str, int] = {}
    for r in reference.records:
        if r.subtask is not None:
            subtasks[r.subtask] = subtasks.get(r.subtask, 0) + 1
    assert got["subtasks"] == subtasks and len(subtasks) == 3


def _build(
    items: list[tuple[str, Any]], batch: int
) -> tuple[list[tuple[int, parsing.ParsedRecord]], parsing.DatasetSummary]:
    stored: list[tuple[int, parsing.ParsedRecord]] = []

    def store(first: int, kept: list[parsing.ParsedRecord]) -> None:
        stored.extend(enumerate(kept, start=first))

    builder = parsing.DatasetBuilder(store, batch_records=batch)
    try:
        builder.add_all(parsing.RawRecord(location, value) for location, value in items)
        return stored, builder.finish()
    finally:
        builder.close()


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_builder_agrees_with_the_reference(batch: int) -> None:
    for seed in range(6):
        items = parsing.parse_jsonl(_jsonl(_mixed_items(120, seed)))
        if seed % 2:  # an id reused for other content, late in the upload
            items.append(("line 999", {"id": "5", "prompt": "other", "response": "x"}))
        if seed >= 3:  # a bad record after it (or alone): the first in order is reported
            items.append(("line 1000", {"prompt": "p", "response": ""}))
        try:
            reference = parsing.parse_records(items)
        except InvalidInput as e:
            with pytest.raises(InvalidInput) as got:
                _build(items, batch)
            assert (got.value.field, got.value.message) == (e.field, e.message)
            continue
        stored, summary = _build(items, batch)
        assert [r for _, r in stored] == reference.records
        assert [p for p, _ in stored] == list(range(len(stored)))
        assert summary.duplicates == reference.duplicates
        assert summary.content_hash == reference.content_hash
        assert summary.n_prompt_only == reference.n_prompt_only


def test_jsonl_reader_splits_anywhere() -> None:
    """Fed one byte or a few at a time, the reader yields what it yields for the whole file."""
    data = (
        b"\xef\xbb\xbf"
        + _jsonl(records(3))
        + b"\r\n  \n"
        + '{"prompt": "a\u2028b", "response": "\u00e9"}'.encode()
        + b'\n{"prompt": "last", "response": "no newline"}'
    )
    whole = parsing.parse_jsonl(data)
    assert [loc for loc, _ in whole] == ["line 1", "line 2", "line 3", "line 6", "line 7"]
    assert whole[3][1]["prompt"] == "a\u2028b"
    rng = random.Random(0)
    for _ in range(20):
        reader = parsing.JsonlReader()
        got, start = [], 0
        while start < len(data):
            size = rng.randint(1, 9)
            got += [(r.location, r.value) for r in reader.feed(data[start : start + size])]
            start += size
        got += [(r.location, r.value) for r in reader.close()]
        assert got == whole


def test_limit_crossed_after_batches_were_stored_leaves_nothing(
    app: FastAPI, client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(parsing, "BATCH_RECORDS", 10)
    stored: list[int] = []
    real = repository.insert_records

    def counting(session: Session, rows: list[dict[str, Any]], batch: int = 5000) -> None:
        stored.append(len(rows))
        real(session, rows, batch)

    monkeypatch.setattr(repository, "insert_records", counting)
    big = _multipart_body([("name", None, b"x"), ("file", "d", _jsonl(records(5000)))])
    assert len(big) > 256 * 1024  # the limit of the test settings
    assert _error(_streamed(app, client, big, 8192), 413)["code"] == "payload_too_large"
    assert sum(stored) > 1000  # records were inserted while the body streamed ...
    assert _counts(db) == (0, 0)  # ... and rolled back with it
    stored.clear()
    bad = [*records(500), {"prompt": "p", "response": " "}]
    body = _multipart_body([("name", None, b"x"), ("file", "d", _jsonl(bad))])
    assert _error(_streamed(app, client, body, 4096), 422)["field"] == "line 501.response"
    assert sum(stored) >= 400
    assert _counts(db) == (0, 0)


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


def test_records_by_id(client: TestClient, make_client: Callable[..., TestClient]) -> None:
    ds = client.post("/v1/datasets", json={"name": "r", "records": records(7)}).json()
    url = f"/v1/datasets/{ds['id']}/records"

    def ids(params: dict[str, Any]) -> tuple[list[str], int]:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        return [r["record_id"] for r in response.json()["items"]], response.json()["total"]

    # only the ids asked for, in upload order whatever the order asked; unknown ids absent
    assert ids({"record_id": ["r5", "r1", "nope", "r3"]}) == (["r1", "r3", "r5"], 3)
    assert ids({"record_id": ["r4", "r4"]}) == (["r4"], 1)
    assert ids({"record_id": "missing"}) == ([], 0)
    # paged like the unfiltered list; total counts the matches
    wanted = {"record_id": ["r6", "r0", "r2", "r4", "r5"]}
    assert ids({**wanted, "limit": 2}) == (["r0", "r2"], 5)
    assert ids({**wanted, "limit": 2, "offset": 2}) == (["r4", "r5"], 5)
    assert ids({**wanted, "limit": 2, "offset": 4}) == (["r6"], 5)
    assert ids({**wanted, "offset": 5}) == ([], 5)
    page = client.get(url, params={"record_id": "r2"}).json()
    assert page["items"] == client.get(url, params={"limit": 1, "offset": 2}).json()["items"]

    # bounds: at most 200 ids, each 1..255 characters
    assert ids({"record_id": [f"r{i}" for i in range(200)]}) == ([f"r{i}" for i in range(7)], 7)
    too_many = _error(client.get(url, params={"record_id": [f"x{i}" for i in range(201)]}), 422)
    assert too_many["field"] == "query.record_id" and too_many["code"] == "validation_error"
    assert ids({"record_id": ["y" * 255]}) == ([], 0)
    for bad in ("", "y" * 256):
        error = _error(client.get(url, params={"record_id": ["r1", bad]}), 422)
        assert error["field"] == "query.record_id.1", error
        assert error["message"].startswith("query.record_id.1: ")

    # another tenant's dataset is still not found, filter or not
    other = make_client("team-b")
    assert _error(other.get(url, params={"record_id": "r1"}), 404)["code"] == "not_found"


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
        assert f"valuation {valuation['id']} (queued)" in error["message"]
        assert "?cascade=true" in error["message"] and error["field"] == "dataset_id"
    assert client.get(f"/v1/datasets/{pool['id']}").status_code == 200
    # the way out: delete the valuation, or cascade (see tests/service/test_deletion.py)
    assert client.delete(f"/v1/valuations/{valuation['id']}").status_code == 204
    assert client.delete(f"/v1/datasets/{pool['id']}").status_code == 204
