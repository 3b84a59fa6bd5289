"""Upload parsing: JSONL lines or JSON items -> normalized, deduplicated records.

Pure functions (no database), so an upload is validated completely before anything is written.
Each item carries a *location* used in error messages and the error's ``field``: ``line 4``
for JSONL (1-based line numbers), ``records.3`` for a JSON body (0-based index).

Accepted record shapes (detected per record)::

    {"prompt": "...", "response": "..."}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

plus optional ``id`` (string or integer), ``subtask`` (string) and ``metadata`` (object); any
other field is kept in ``raw``. The record's content is its normalized ``messages``; its
``content_hash`` is the sha256 of their canonical JSON, and a record without ``id`` gets
``"h-" + content_hash[:16]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from service.errors import InvalidInput

ROLES = ("system", "user", "assistant")
MAX_ID_LENGTH = 255


@dataclass(frozen=True)
class ParsedRecord:
    record_id: str
    subtask: str | None
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    raw: dict[str, Any]
    content_hash: str

    @property
    def has_response(self) -> bool:
        """False for a prompt-only record (a NICE probe whose answers are sampled)."""
        return self.messages[-1]["role"] == "assistant"


@dataclass
class ParsedDataset:
    records: list[ParsedRecord]
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    """``{"index", "record_id", "duplicate_of"}`` per skipped exact duplicate (0-based input
    index)."""

    @property
    def content_hash(self) -> str:
        return dataset_content_hash(self.records)

    @property
    def n_prompt_only(self) -> int:
        return sum(not r.has_response for r in self.records)

    @property
    def subtasks(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            if r.subtask is not None:
                counts[r.subtask] = counts.get(r.subtask, 0) + 1
        return counts


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(canonical_json(messages)).hexdigest()


def dataset_content_hash(records: list[ParsedRecord]) -> str:
    """sha256 over ``record_id NUL content_hash LF`` for the records in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(r.record_id.encode())
        h.update(b"\0")
        h.update(r.content_hash.encode())
        h.update(b"\n")
    return h.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN and Infinity (no JSON database stores them)."""
    return json.loads(text, parse_constant=_reject_constant)


def parse_jsonl(data: bytes, field_name: str = "file") -> list[tuple[str, Any]]:
    """Split a JSONL upload into ``("line N", value)``; blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{field_name} is not UTF-8: {e}", field=field_name) from None
    items: list[tuple[str, Any]] = []
    # Split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            items.append((f"line {number}", loads_strict(line)))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise InvalidInput(
                f"line {number}: invalid JSON: {e}", field=f"line {number}"
            ) from None
    return items


def _fail(location: str, name: str, message: str) -> InvalidInput:
    return InvalidInput(f"{location}: {name} {message}", field=f"{location}.{name}")


def _normalize_messages(location: str, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _fail(location, "messages", "must be a non-empty list of {role, content}")
    messages = []
    for i, message in enumerate(value):
        name = f"messages.{i}"
        if not isinstance(message, dict):
            raise _fail(location, name, "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _fail(location, f"{name}.role", f"must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise _fail(location, f"{name}.content", "must be a string")
        messages.append({"role": role, "content": content})
    last = messages[-1]
    if last["role"] == "user":  # prompt only: accepted, valuations decide whether they need one
        return messages
    if last["role"] != "assistant":
        raise _fail(
            location,
            f"messages.{len(messages) - 1}.role",
            "of the last message must be 'assistant' (the response) or 'user' (prompt only)",
        )
    if not last["content"].strip():
        raise _fail(location, f"messages.{len(messages) - 1}.content", "(the response) is empty")
    return messages


def normalize_record(location: str, value: Any) -> ParsedRecord:
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{location}: a record must be a JSON object, got {type(value).__name__}",
            field=location,
        )
    has_messages = "messages" in value
    has_pair = "prompt" in value or "response" in value
    if has_messages and has_pair:
        raise _fail(location, "messages", "cannot be combined with prompt/response")
    if has_messages:
        messages = _normalize_messages(location, value["messages"])
    elif has_pair:
        prompt, response = value.get("prompt"), value.get("response")
        if not isinstance(prompt, str):
            raise _fail(location, "prompt", "must be a string")
        messages = [{"role": "user", "content": prompt}]
        if response is not None:  # absent or null: a prompt-only record
            if not isinstance(response, str) or not response.strip():
                raise _fail(location, "response", "must be a non-empty string (or absent)")
            messages.append({"role": "assistant", "content": response})
    else:
        raise InvalidInput(
            f"{location}: a record needs 'messages' or 'prompt' and 'response'", field=location
        )

    digest = content_hash(messages)
    given_id = value.get("id")
    if given_id is None:
        record_id = "h-" + digest[:16]
    elif isinstance(given_id, bool) or not isinstance(given_id, str | int):
        raise _fail(location, "id", "must be a string or an integer")
    else:
        record_id = str(given_id)
        if not record_id or len(record_id) > MAX_ID_LENGTH:
            raise _fail(location, "id", f"must have 1 to {MAX_ID_LENGTH} characters")

    subtask = value.get("subtask")
    if subtask is not None and (not isinstance(subtask, str) or len(subtask) > 255):
        raise _fail(location, "subtask", "must be a string of at most 255 characters")
    metadata = value.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise _fail(location, "metadata", "must be an object")

    return ParsedRecord(
        record_id=record_id,
        subtask=subtask,
        messages=messages,
        metadata=metadata,
        raw=value,
        content_hash=digest,
    )


def parse_records(items: list[tuple[str, Any]], source_field: str = "records") -> ParsedDataset:
    """Normalize every item, skip exact duplicates, refuse an id reused for other content."""
    kept: list[ParsedRecord] = []
    duplicates: list[dict[str, Any]] = []
    by_id: dict[str, tuple[str, str]] = {}  # record_id -> (content_hash, location)
    by_hash: dict[str, str] = {}  # content_hash -> record_id
    for index, (location, value) in enumerate(items):
        record = normalize_record(location, value)
        seen = by_id.get(record.record_id)
        if seen is not None:
            if seen[0] != record.content_hash:
                raise _fail(
                    location,
                    "id",
                    f"{record.record_id!r} is also the id of {seen[1]}, which has different "
                    "content",
                )
            duplicates.append(
                {"index": index, "record_id": record.record_id, "duplicate_of": record.record_id}
            )
            continue
        first = by_hash.get(record.content_hash)
        if first is not None:
            duplicates.append(
                {"index": index, "record_id": record.record_id, "duplicate_of": first}
            )
            continue
        by_id[record.record_id] = (record.content_hash, location)
        by_hash[record.content_hash] = record.record_id
        kept.append(record)
    if not kept:
        raise InvalidInput("the dataset has no records", field=source_field)
    return ParsedDataset(records=kept, duplicates=duplicates)
