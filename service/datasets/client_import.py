"""``sift datasets import``: read a local table (any format :mod:`service.datasets.imports`
reads), map its columns to records and upload them through a running API as one JSONL file,
streamed: the multipart body is produced as the rows are read, so neither this process nor
the API holds the dataset in memory.

Each record is checked here with the API's own record rules first, so a bad row stops the
upload with its location before the rest is sent; the API checks again and, should the
upload stop half way, stores nothing (a body without its closing boundary is refused).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from service.datasets.imports import ColumnMapping, open_path, read_mapped
from service.datasets.parsing import normalize_record
from service.errors import InvalidInput

DEFAULT_URL = "http://127.0.0.1:8000"
SEND_BYTES = 1 << 20


def parse_map_args(items: Sequence[str]) -> ColumnMapping:
    """``--map FIELD=COLUMN`` pairs; ``metadata`` may repeat or list columns with commas."""
    mapping: dict[str, Any] = {}
    for item in items:
        key, sep, column = item.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not key or not column:
            raise InvalidInput(f"--map {item!r}: write FIELD=COLUMN", field="--map")
        if key == "metadata":
            mapping.setdefault("metadata", []).extend(
                c.strip() for c in column.split(",") if c.strip()
            )
        elif key in mapping:
            raise InvalidInput(f"--map {key} given twice", field="--map")
        else:
            mapping[key] = column
    return ColumnMapping.parse(mapping, "--map")


def api_key_from_env(given: str | None, key_file: str) -> str:
    """``--api-key``, else ``SIFT_API_KEY``, else the embedded default's key file."""
    key = given or os.environ.get("SIFT_API_KEY")
    if key:
        return key
    path = Path(key_file)
    if path.exists():
        return path.read_text().strip()
    raise InvalidInput(
        f"no API key: pass --api-key, set SIFT_API_KEY, or run where {key_file} exists",
        field="--api-key",
    )


def jsonl_lines(
    source: Path, mapping: ColumnMapping, fmt: str = "auto", split: str | None = None
) -> tuple[Iterator[bytes], Any]:
    """The records of ``source`` as JSONL lines (checked by the record rules), and the opened
    source (close it when done). The mapping's columns are checked before this returns."""
    table = open_path(source, fmt, split, "source")
    try:
        records = read_mapped(table, mapping)
    except BaseException:
        table.close()
        raise

    def lines() -> Iterator[bytes]:
        for item in records:
            normalize_record(item.location, item.value, item.scan)
            yield json.dumps(item.value, ensure_ascii=False).encode() + b"\n"

    return lines(), table


def multipart_body(
    name: str, lines: Iterator[bytes], boundary: str, counter: list[int]
) -> Iterator[bytes]:
    """A multipart/form-data body (``name``, then ``file``) produced piece by piece. A JSONL
    line never holds ``\\r\\n--`` (JSON escapes CR), so the boundary cannot occur in it."""
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n'
    yield head.encode() + name.encode() + b"\r\n"
    yield (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        'name="file"; filename="import.jsonl"\r\nContent-Type: application/x-ndjson\r\n\r\n'
    ).encode()
    pending = bytearray()
    for line in lines:
        counter[0] += 1
        pending += line
        if len(pending) >= SEND_BYTES:
            yield bytes(pending)
            pending.clear()
    yield bytes(pending) + f"\r\n--{boundary}--\r\n".encode()


def import_to_api(
    source: Path,
    name: str,
    mapping: ColumnMapping,
    *,
    base_url: str,
    api_key: str,
    fmt: str = "auto",
    split: str | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Upload ``source``'s mapped records as dataset ``name``; the API's DatasetRead."""
    import httpx

    lines, table = jsonl_lines(source, mapping, fmt, split)
    boundary = "sift-" + secrets.token_hex(16)
    counter = [0]
    started = time.monotonic()
    try:
        with httpx.Client(base_url=base_url, timeout=timeout) as http:
            response = http.post(
                "/v1/datasets",
                content=multipart_body(name, lines, boundary, counter),
                headers={
                    "authorization": f"Bearer {api_key}",
                    "content-type": f"multipart/form-data; boundary={boundary}",
                },
            )
    finally:
        table.close()
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['message']} (field {error['field']})"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise InvalidInput(f"the API refused the upload ({response.status_code}): {message}")
    body: dict[str, Any] = response.json()
    body["_sent_records"] = counter[0]
    body["_seconds"] = round(time.monotonic() - started, 2)
    return body
