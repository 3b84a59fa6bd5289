"""Upload parsing: JSONL lines or JSON items -> normalized, deduplicated records.

No database here: the rules a record must meet, an incremental JSONL reader, and a
:class:`DatasetBuilder` that normalizes records as they arrive, skips exact duplicates and hands
the kept ones on in batches, so an upload of any size is parsed in constant memory.
:func:`parse_records` is the plain in-memory reference the tests hold the builder equal to.

Each item carries a *location* used in error messages and the error's ``field``: ``line 4``
for JSONL (1-based line numbers), ``records.3`` for a JSON body (0-based index); a field inside
a record follows it, ``line 4.metadata.source``.

Accepted record shapes (detected per record)::

    {"prompt": "...", "response": "..."}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

plus optional ``id`` (string or integer), ``subtask`` (string) and ``metadata`` (object); these
are all the fields a record has (:data:`RECORD_FIELDS`): any other is refused, so a typo such as
``meta`` is a 422 rather than silently ignored; anything else belongs in ``metadata``. Strings
and keys anywhere in a record may not hold NUL or lone surrogates (no database stores them);
``metadata`` nests at most :data:`MAX_METADATA_DEPTH` levels and is at most
:data:`MAX_METADATA_BYTES` as JSON; a JSONL line is at most :data:`MAX_RECORD_BYTES`.

The record's content is its normalized ``messages``; its ``content_hash`` is the sha256 of their
canonical JSON, and a record without ``id`` gets ``"h-" + content_hash[:16]``.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service.errors import InvalidInput

ROLES = ("system", "user", "assistant")
RECORD_FIELDS = ("id", "prompt", "response", "messages", "subtask", "metadata")
MAX_ID_LENGTH = 255
MAX_SUBTASK_LENGTH = 255
MAX_METADATA_DEPTH = 32
"""Levels of nesting in ``metadata``, the object itself being level 1."""
MAX_METADATA_BYTES = 64 * 1024
"""UTF-8 bytes of ``metadata`` as canonical JSON."""
MAX_RECORD_BYTES = 4 * 1024 * 1024
"""Bytes of one JSONL line: the reader buffers at most one line, so memory stays bounded."""
BATCH_RECORDS = 1000
BATCH_BYTES = 8 * 1024 * 1024
"""Records are handed on (inserted) together, 1000 at a time or fewer when their text passes
8 MiB."""

_BOM = b"\xef\xbb\xbf"
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
"""In JSON text NUL and surrogates can only come from ``\\u`` escapes (UTF-8 has no surrogates
and a raw NUL is not valid JSON), so a line without this pattern needs no string walk."""
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"\s*:|"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlevel = 3


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


class RawRecord(NamedTuple):
    """One item of an upload, parsed as JSON but not yet checked."""

    location: str
    value: Any
    scan: bool = True
    """Whether its strings may hold NUL or lone surrogates (False only when its text had no
    ``\\u`` escape that could make one)."""
    size: int = 0
    """Bytes of its JSON text, where known: bounds a batch's memory."""


@dataclass
class ParsedDataset:
    """The reference result of :func:`parse_records`: every kept record in memory."""

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


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(canonical_json(messages)).hexdigest()


def _hash_line(record: ParsedRecord) -> bytes:
    return record.record_id.encode() + b"\0" + record.content_hash.encode() + b"\n"


def dataset_content_hash(records: Iterable[ParsedRecord]) -> str:
    """sha256 over ``record_id NUL content_hash LF`` for the records in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(_hash_line(r))
    return h.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN and Infinity (no JSON database stores them)."""
    return json.loads(text, parse_constant=_reject_constant)


# --- strings and nesting ------------------------------------------------------------------------


def _printable(key: Any) -> str:
    """A key as it may appear in a ``field``: bad characters escaped, at most 64 characters."""
    text = _BAD_CHAR.sub(lambda m: f"\\u{ord(m.group()):04x}", str(key))
    return text if len(text) <= 64 else text[:61] + "..."


def _dotted(location: str, path: Iterable[Any]) -> str:
    parts = [_printable(p) for p in path]
    return ".".join([location, *parts] if location else parts)


def _describe(char: str) -> str:
    if char == "\x00":
        return "a NUL character (U+0000), which Postgres cannot store"
    return f"a lone surrogate (U+{ord(char):04X}), which is not valid Unicode text"


def _bad_string(value: Any) -> tuple[tuple[Any, ...], str] | None:
    """``(path, char)`` of the first string or key holding NUL or a lone surrogate."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if match := _BAD_CHAR.search(item):
                return path, match.group()
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if match := _BAD_CHAR.search(key):
                    return (*path, key), match.group()
                children.append(((*path, key), child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([((*path, i), child) for i, child in enumerate(item)]))
    return None


def check_strings(location: str, value: Any) -> None:
    """Refuse NUL and lone surrogates anywhere in ``value``, naming where."""
    found = _bad_string(value)
    if found is not None:
        path, char = found
        where = _dotted(location, path)
        raise InvalidInput(f"{where} contains {_describe(char)}", field=where or None)


def may_hold_bad_chars(raw: bytes) -> bool:
    return _SUSPECT.search(raw) is not None


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def nesting_path(text: str, limit: int) -> list[str]:
    """Keys and indexes from the top down to the first container of ``text`` nested deeper
    than ``limit`` ([] if none): names the field of a value too deep for ``json.loads``."""
    path: list[str] = []
    arrays: list[bool] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        char = token[0]
        if char == '"':
            if token.endswith(":") and arrays and not arrays[-1]:
                try:
                    path[-1] = str(json.loads(token[:-1].rstrip()))
                except ValueError:
                    path[-1] = token[1:-1]
        elif char in "[{":
            if len(arrays) >= limit:
                return path
            arrays.append(char == "[")
            path.append("0" if char == "[" else "")
        elif char in "]}":
            if arrays:
                arrays.pop()
                path.pop()
        elif arrays and arrays[-1]:  # a comma between array items
            path[-1] = str(int(path[-1]) + 1)
    return []


def _too_deep(field_name: str) -> InvalidInput:
    return InvalidInput(
        f"{field_name} is nested too deeply (metadata may nest {MAX_METADATA_DEPTH} levels)",
        field=field_name,
    )


def load_record_text(location: str, text: str) -> Any:
    """One record's JSON text (a JSONL line), located errors for invalid or too deep JSON."""
    try:
        return loads_strict(text)
    except RecursionError:
        path = nesting_path(text, MAX_METADATA_DEPTH + 1)
        raise _too_deep(_dotted(location, path[:1])) from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise InvalidInput(f"{location}: invalid JSON: {e}", field=location) from None


def load_body(body: bytes) -> Any:
    """A JSON request body ``{"name", "records": [...]}``; too deep names the record's field."""
    try:
        return loads_strict(body)
    except RecursionError:
        text = body.decode("utf-8", "replace")
        path = nesting_path(text, MAX_METADATA_DEPTH + 3)
        raise _too_deep(_dotted("", path[:3]) or "body") from None
    except ValueError as e:
        raise InvalidInput(f"body is not valid JSON: {e}", field="body") from None


# --- JSONL ------------------------------------------------------------------------------------


class JsonlReader:
    """Splits a JSONL upload into records as its bytes arrive (``line N``, 1-based).

    Lines are split on ``\\n`` only (``str.splitlines`` would also split on U+2028 inside JSON
    strings), a UTF-8 byte order mark at the start is dropped, blank lines are skipped, and a
    line longer than :data:`MAX_RECORD_BYTES` is refused before it is buffered whole.
    ``feed`` and ``close`` are generators: consume them to the end.
    """

    def __init__(self, field_name: str = "file") -> None:
        self.field_name = field_name
        self._partial = bytearray()
        self._line = 0

    def feed(self, data: bytes) -> Iterator[RawRecord]:
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += data[start:newline]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = data[start:newline]
            start = newline + 1
            self._line += 1
            item = self._parse(self._line, line)
            if item is not None:
                yield item
        if len(self._partial) + len(data) - start > MAX_RECORD_BYTES:
            raise self._too_long(self._line + 1)
        self._partial += data[start:]

    def close(self) -> Iterator[RawRecord]:
        """The last line, when the upload does not end with a newline."""
        if self._partial:
            line = bytes(self._partial)
            self._partial.clear()
            self._line += 1
            item = self._parse(self._line, line)
            if item is not None:
                yield item

    def _too_long(self, number: int) -> InvalidInput:
        return InvalidInput(
            f"line {number} is longer than {MAX_RECORD_BYTES} bytes, the limit for one record",
            field=f"line {number}",
        )

    def _parse(self, number: int, line: bytes) -> RawRecord | None:
        if len(line) > MAX_RECORD_BYTES:
            raise self._too_long(number)
        if number == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise InvalidInput(
                f"{self.field_name} is not UTF-8 (line {number}): {e}", field=self.field_name
            ) from None
        if not text:
            return None
        location = f"line {number}"
        value = load_record_text(location, text)
        return RawRecord(location, value, may_hold_bad_chars(line), len(line))


def parse_jsonl(data: bytes, field_name: str = "file") -> list[tuple[str, Any]]:
    """A whole JSONL upload as ``("line N", value)`` (for tests and small inputs)."""
    reader = JsonlReader(field_name)
    return [(r.location, r.value) for r in (*reader.feed(data), *reader.close())]


# --- one record -------------------------------------------------------------------------------


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
            raise _fail(
                location, f"{name}.role", f"must be one of {list(ROLES)}, got {_SHOW.repr(role)}"
            )
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


def _check_metadata(location: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(location, "metadata", "must be an object")
    if _deeper_than(value, MAX_METADATA_DEPTH):
        raise _fail(location, "metadata", f"nests deeper than {MAX_METADATA_DEPTH} levels")
    if value:
        size = len(canonical_json(value))
        if size > MAX_METADATA_BYTES:
            raise _fail(
                location, "metadata", f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
            )
    return value


def normalize_record(location: str, value: Any, scan: bool = True) -> ParsedRecord:
    """Check one record and normalize it; ``scan`` False skips the string walk (see
    :class:`RawRecord`)."""
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{location}: a record must be a JSON object, got {type(value).__name__}",
            field=location,
        )
    if scan:
        check_strings(location, value)
    unknown = [key for key in value if key not in RECORD_FIELDS]
    if unknown:
        raise InvalidInput(
            f"{location}: unknown field(s) {', '.join(_SHOW.repr(k) for k in unknown[:5])}; a "
            f"record has only {', '.join(RECORD_FIELDS)} (put anything else in metadata)",
            field=_dotted(location, unknown[:1]),
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
    if subtask is not None and (not isinstance(subtask, str) or len(subtask) > MAX_SUBTASK_LENGTH):
        raise _fail(
            location, "subtask", f"must be a string of at most {MAX_SUBTASK_LENGTH} characters"
        )
    metadata = _check_metadata(location, value.get("metadata"))

    return ParsedRecord(
        record_id=record_id,
        subtask=subtask,
        messages=messages,
        metadata=metadata,
        raw=value,
        content_hash=digest,
    )


def _id_conflict(location: str, record: ParsedRecord, first_location: str) -> InvalidInput:
    return _fail(
        location,
        "id",
        f"{record.record_id!r} is also the id of {first_location}, which has different content",
    )


# --- a whole upload -----------------------------------------------------------------------------


def parse_records(items: list[tuple[str, Any]], source_field: str = "records") -> ParsedDataset:
    """Reference: normalize every item, skip exact duplicates, refuse an id reused for other
    content; everything in memory. :class:`DatasetBuilder` must agree with it."""
    kept: list[ParsedRecord] = []
    duplicates: list[dict[str, Any]] = []
    by_id: dict[str, tuple[str, str]] = {}  # record_id -> (content_hash, location)
    by_hash: dict[str, str] = {}  # content_hash -> record_id
    for index, (location, value) in enumerate(items):
        record = normalize_record(location, value)
        seen = by_id.get(record.record_id)
        if seen is not None:
            if seen[0] != record.content_hash:
                raise _id_conflict(location, record, seen[1])
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


class SeenIndex:
    """The kept records' ids and content hashes, for duplicate detection in constant memory.

    A private temporary SQLite database (deleted when closed) whose page cache is capped at
    8 MiB: beyond it pages go to disk, so an upload of millions of records costs disk, not
    memory. Looked up and extended a batch at a time.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.executescript(
            "PRAGMA cache_size = -8192;"
            "PRAGMA journal_mode = OFF;"
            "PRAGMA synchronous = OFF;"
            "CREATE TABLE ids (record_id TEXT PRIMARY KEY, hash BLOB, location TEXT)"
            " WITHOUT ROWID;"
            "CREATE TABLE hashes (hash BLOB PRIMARY KEY, record_id TEXT) WITHOUT ROWID;"
        )

    def by_id(self, record_ids: list[str]) -> dict[str, tuple[str, str]]:
        """``record_id -> (content_hash, location)`` for those already kept."""
        marks = ",".join("?" * len(record_ids))
        rows = self._db.execute(
            f"SELECT record_id, hash, location FROM ids WHERE record_id IN ({marks})", record_ids
        )
        return {record_id: (digest.hex(), location) for record_id, digest, location in rows}

    def by_hash(self, hashes: list[str]) -> dict[str, str]:
        """``content_hash -> record_id`` of the kept record with that content."""
        marks = ",".join("?" * len(hashes))
        rows = self._db.execute(
            f"SELECT hash, record_id FROM hashes WHERE hash IN ({marks})",
            [bytes.fromhex(h) for h in hashes],
        )
        return {digest.hex(): record_id for digest, record_id in rows}

    def add(self, records: list[tuple[ParsedRecord, str]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT INTO ids VALUES (?, ?, ?)",
                [(r.record_id, bytes.fromhex(r.content_hash), loc) for r, loc in records],
            )
            self._db.executemany(
                "INSERT INTO hashes VALUES (?, ?)",
                [(bytes.fromhex(r.content_hash), r.record_id) for r, _ in records],
            )

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True)
class DatasetSummary:
    """What the dataset row records once every record is in."""

    n_records: int
    n_prompt_only: int
    duplicates: list[dict[str, Any]]
    content_hash: str


class DatasetBuilder:
    """Normalizes records as they arrive and hands the kept ones to ``store`` in batches.

    ``store(first_position, records)`` receives the kept records in upload order. Duplicates
    and id conflicts are decided exactly as :func:`parse_records` decides them, and errors come
    in the same order: the first bad item of the upload is the one reported. Memory holds one
    batch, the duplicates list and the (disk-backed) :class:`SeenIndex`.
    """

    def __init__(
        self,
        store: Callable[[int, list[ParsedRecord]], None],
        source_field: str = "records",
        batch_records: int | None = None,
    ) -> None:
        self._store = store
        self.source_field = source_field
        self.batch_records = batch_records or BATCH_RECORDS
        self._pending: list[tuple[int, str, ParsedRecord]] = []
        self._pending_bytes = 0
        self._index = SeenIndex()
        self._items = 0
        self._kept = 0
        self._prompt_only = 0
        self._duplicates: list[dict[str, Any]] = []
        self._hash = hashlib.sha256()

    def add_all(self, items: Iterable[RawRecord]) -> None:
        """Normalize ``items``; kept records are stored a batch at a time (the last by
        :meth:`finish`)."""
        try:
            for location, value, scan, size in items:
                record = normalize_record(location, value, scan)
                self._pending.append((self._items, location, record))
                self._pending_bytes += size
                self._items += 1
                if len(self._pending) >= self.batch_records or self._pending_bytes >= BATCH_BYTES:
                    self._flush()
        except InvalidInput:
            self._flush()  # an id conflict earlier in the upload is reported first
            raise

    def finish(self) -> DatasetSummary:
        self._flush()
        if not self._kept:
            raise InvalidInput("the dataset has no records", field=self.source_field)
        return DatasetSummary(
            n_records=self._kept,
            n_prompt_only=self._prompt_only,
            duplicates=self._duplicates,
            content_hash=self._hash.hexdigest(),
        )

    def close(self) -> None:
        self._index.close()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if not pending:
            return
        by_id = self._index.by_id(list({r.record_id for _, _, r in pending}))
        by_hash = self._index.by_hash(list({r.content_hash for _, _, r in pending}))
        kept: list[tuple[ParsedRecord, str]] = []
        for index, location, record in pending:
            seen = by_id.get(record.record_id)
            if seen is not None:
                if seen[0] != record.content_hash:
                    raise _id_conflict(location, record, seen[1])
                seen_id = record.record_id
                self._duplicates.append(
                    {"index": index, "record_id": record.record_id, "duplicate_of": seen_id}
                )
                continue
            first = by_hash.get(record.content_hash)
            if first is not None:
                self._duplicates.append(
                    {"index": index, "record_id": record.record_id, "duplicate_of": first}
                )
                continue
            by_id[record.record_id] = (record.content_hash, location)
            by_hash[record.content_hash] = record.record_id
            kept.append((record, location))
        if not kept:
            return
        records = [r for r, _ in kept]
        self._store(self._kept, records)
        for r in records:
            self._hash.update(_hash_line(r))
        self._kept += len(records)
        self._prompt_only += sum(not r.has_response for r in records)
        self._index.add(kept)
