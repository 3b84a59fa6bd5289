"""Imports: tables where data lives (Hugging Face ``load_from_disk`` folders, parquet, CSV,
JSONL, optionally gzipped, a hub id) -> Sift records through a column mapping.

A :class:`ColumnMapping` names, for each Sift record field, the source column it comes from::

    {"prompt": "question", "response": "answer", "subtask": "task", "id": "idx",
     "metadata": ["difficulty", "source"]}
    {"messages": "conversation"}            # a list of {role, content} per row

Each source is opened as a :class:`TableSource`: its column names (checked against the mapping
before any row is read, so a mapping naming a column the source lacks is a 422 naming it) and
its rows, read a bounded piece at a time — parquet by record batches of its row groups, CSV
with the ``csv`` module line by line, JSONL through :class:`~service.datasets.parsing.JsonlReader`,
a ``load_from_disk`` folder through its memory-mapped Arrow files. :meth:`ColumnMapping.record`
turns a row into the record dict an upload would hold; the records then go through the same
:class:`~service.datasets.parsing.DatasetBuilder` (the record rules, deduplication, batched
inserts in one transaction) as any upload. Nothing here writes anything.

Server-side paths are the operator's: :func:`resolve_source_path` only accepts paths whose real
location (symlinks resolved) is inside one of ``SIFT_IMPORT_ROOTS``, and a folder must hold no
link, and name no data file, that leads outside it.

``datasets`` (and with it pandas) is imported only when a folder or a hub id is opened; it
imports no torch (tests/service/test_dataset_imports.py runs such an import in a fresh
process and checks).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.datasets.parsing import (
    MAX_RECORD_BYTES,
    JsonlReader,
    RawRecord,
    canonical_json,
)
from service.errors import InvalidInput, PayloadTooLarge

Format = Literal["auto", "hf_disk", "parquet", "csv", "jsonl"]
FORMATS: tuple[str, ...] = ("hf_disk", "parquet", "csv", "jsonl")
BATCH_ROWS = 256
"""Rows read from a parquet file or an Arrow dataset at a time."""
READ_BYTES = 1 << 20
"""Bytes of a JSONL file (after decompression) handed to the reader at a time."""
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


class ColumnMap(BaseModel):
    """Which source column fills each Sift record field (all optional; ``prompt`` or
    ``messages`` is needed)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "question", "response": "answer"}]},
    )

    prompt: str | None = Field(default=None, min_length=1, description="a text column")
    response: str | None = Field(
        default=None, min_length=1, description="a text column; empty cells: prompt-only records"
    )
    messages: str | None = Field(
        default=None,
        min_length=1,
        description="a column holding a list of {role, content} (instead of prompt/response)",
    )
    subtask: str | None = Field(default=None, min_length=1, description="a text column")
    id: str | None = Field(default=None, min_length=1, description="a text or integer column")
    metadata: list[str] = Field(
        default_factory=list,
        description="columns copied into each record's metadata, under their names",
    )


@dataclass(frozen=True)
class ColumnMapping:
    """A checked :class:`ColumnMap`: source rows -> record dicts."""

    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    subtask: str | None = None
    id: str | None = None
    metadata: tuple[str, ...] = ()
    field_name: str = "mapping"
    """How the mapping is named in errors (``mapping`` in a form, ``body.mapping`` in JSON)."""

    @classmethod
    def parse(cls, value: Any, field_name: str = "mapping") -> ColumnMapping:
        """From a decoded JSON object; 422s name ``mapping.<field>``."""
        try:
            model = ColumnMap.model_validate(value)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join([field_name, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                message = (
                    f"{where}: {str(err['loc'][0])!r} is not a Sift record field; a mapping maps "
                    f"{', '.join(ColumnMap.model_fields)} to source columns"
                )
            else:
                message = f"{where}: {err['msg']}"
            raise InvalidInput(message, field=where) from None
        return cls.from_model(model, field_name)

    @classmethod
    def from_model(cls, model: ColumnMap, field_name: str = "mapping") -> ColumnMapping:
        if model.messages is not None and (model.prompt or model.response):
            raise InvalidInput(
                f"{field_name}: messages cannot be combined with prompt/response",
                field=f"{field_name}.messages",
            )
        if model.messages is None and model.prompt is None:
            raise InvalidInput(
                f"{field_name} needs a column for prompt (and usually response) or for messages",
                field=field_name,
            )
        if len(set(model.metadata)) != len(model.metadata):
            raise InvalidInput(
                f"{field_name}.metadata names a column twice", field=f"{field_name}.metadata"
            )
        return cls(
            prompt=model.prompt,
            response=model.response,
            messages=model.messages,
            subtask=model.subtask,
            id=model.id,
            metadata=tuple(model.metadata),
            field_name=field_name,
        )

    @classmethod
    def from_text(cls, text: str, field_name: str = "mapping") -> ColumnMapping:
        """From a form field holding JSON."""
        try:
            value = json.loads(text)
        except ValueError as e:
            raise InvalidInput(f"{field_name} is not valid JSON: {e}", field=field_name) from None
        return cls.parse(value, field_name)

    def fields(self) -> list[tuple[str, str]]:
        """``(sift_field, column)`` for every mapped column, metadata as ``metadata.i``."""
        out = [
            (name, column)
            for name in ("prompt", "response", "messages", "subtask", "id")
            if (column := getattr(self, name)) is not None
        ]
        return out + [(f"metadata.{i}", column) for i, column in enumerate(self.metadata)]

    def columns(self, available: Sequence[str] = ()) -> list[str]:
        """The distinct source columns the mapping reads, in mapping order: a dotted name
        (``doc.question``) that is not itself a column reads its top-level column (``doc``)."""
        have = set(available)
        return list(
            dict.fromkeys(
                column if column in have or not have else column.split(".")[0]
                for _, column in self.fields()
            )
        )

    def check_columns(self, available: Sequence[str]) -> None:
        """422 naming every mapped column the source does not have (a dotted name needs its
        top-level column; what lies inside is known only row by row)."""
        have = set(available)
        missing = [
            (name, column)
            for name, column in self.fields()
            if column not in have and column.split(".")[0] not in have
        ]
        if missing:
            shown = ", ".join(repr(column) for _, column in missing)
            listed = ", ".join(repr(c) for c in list(available)[:50]) or "none"
            raise InvalidInput(
                f"{self.field_name} names column(s) the source does not have: {shown} "
                f"(its columns: {listed})",
                field=f"{self.field_name}.{missing[0][0]}",
            )

    def record(self, location: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """The record dict of one row (checked later by the record rules, like an upload's)."""
        out: dict[str, Any] = {}
        if self.messages is not None:
            out["messages"] = _json_value(location, self.messages, _cell(row, self.messages))
        if self.prompt is not None:
            prompt = _text(location, self.prompt, _cell(row, self.prompt))
            if prompt is None:
                raise InvalidInput(
                    f"{location}: column {self.prompt!r} (the prompt) is empty",
                    field=f"{location}.{self.prompt}",
                )
            out["prompt"] = prompt
        if self.response is not None:
            response = _text(location, self.response, _cell(row, self.response))
            if response is not None:
                out["response"] = response
        if self.subtask is not None:
            subtask = _text(location, self.subtask, _cell(row, self.subtask))
            if subtask is not None:
                out["subtask"] = subtask
        if self.id is not None:
            given = _cell(row, self.id)
            if isinstance(given, float) and given.is_integer():
                given = int(given)
            if given is not None:
                out["id"] = (
                    given if isinstance(given, str | int) else _text(location, self.id, given)
                )
        if self.metadata:
            out["metadata"] = {c: _json_value(location, c, _cell(row, c)) for c in self.metadata}
        return out

    def records(
        self, rows: Iterable[tuple[str, Mapping[str, Any]]], limit_bytes: int | None = None
    ) -> Iterator[RawRecord]:
        """Rows -> :class:`RawRecord` for :class:`~service.datasets.parsing.DatasetBuilder`;
        a record over :data:`MAX_RECORD_BYTES` as JSON is refused, and with ``limit_bytes``
        so are records passing that many bytes together (413)."""
        total = 0
        for location, row in rows:
            value = self.record(location, row)
            size = len(canonical_json(value))
            if size > MAX_RECORD_BYTES:
                raise InvalidInput(
                    f"{location} is {size} bytes as a record; the limit is {MAX_RECORD_BYTES}",
                    field=location,
                )
            total += size
            if limit_bytes is not None and total > limit_bytes:
                raise PayloadTooLarge(
                    f"the imported records pass {limit_bytes} bytes as JSON "
                    "(SIFT_MAX_UPLOAD_BYTES bounds an uploaded file's records, whatever its "
                    "compression)"
                )
            yield RawRecord(location, value, True, size)


def _cell(row: Mapping[str, Any], column: str) -> Any:
    """``row[column]``; a dotted name that is not a column walks into nested objects
    (``doc.question``), None where a level is missing."""
    if column in row or "." not in column:
        return row.get(column)
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(location: str, column: str, value: Any) -> str | None:
    """A cell as text: strings as they are, numbers and booleans written out, empty as None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | decimal.Decimal) or (
        isinstance(value, float) and math.isfinite(value)
    ):
        return str(value)
    if isinstance(value, float):
        return None
    raise InvalidInput(
        f"{location}: column {column!r} holds {type(value).__name__}, not text",
        field=f"{location}.{column}",
    )


def _json_value(location: str, column: str, value: Any) -> Any:
    """A cell as JSON: nested lists and objects kept, dates as ISO text, NaN as null; binary
    data is refused."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_value(location, column, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(location, column, v) for v in value]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | dt.timedelta):
        return str(value)
    raise InvalidInput(
        f"{location}: column {column!r} holds {type(value).__name__}, which has no JSON form",
        field=f"{location}.{column}",
    )


# --- sources ------------------------------------------------------------------------------------


Rows = Iterator[tuple[str, Mapping[str, Any]]]


@dataclass
class TableSource:
    """An opened source: its columns, and ``read(columns)``, its rows as ``(location, row)``
    read lazily (only those columns where the format stores them apart)."""

    columns: list[str]
    read: Callable[[list[str]], Rows]
    description: str
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            closer.close()
        self.closers.clear()


def detect_format(name: str, head: bytes = b"", field_name: str = "format") -> str:
    """A file's format from its name (``.parquet``, ``.csv[.gz]``, ``.jsonl[.gz]``,
    ``.ndjson``), else from its first bytes (parquet's magic)."""
    lower = name.lower().removesuffix(".gz")
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    raise InvalidInput(
        f"cannot tell the format of {name!r} from its name; give {field_name} as one of "
        f"{', '.join(f for f in FORMATS if f != 'hf_disk')}",
        field=field_name,
    )


def open_file(
    file: IO[bytes], fmt: str, *, name: str = "file", field_name: str = "file"
) -> TableSource:
    """A parquet, CSV or JSONL file (CSV and JSONL may be gzipped: detected by their first
    bytes). ``file`` must be seekable for parquet; the caller keeps it open while reading."""
    if fmt == "parquet":
        return _open_parquet(file, field_name)
    head = _peek(file, 2)
    stream: IO[bytes] = file
    closers: list[Any] = []
    if head == _GZIP_MAGIC:
        stream = cast(IO[bytes], gzip.GzipFile(fileobj=file, mode="rb"))
        closers.append(stream)
    if fmt == "csv":
        source = _open_csv(stream, name, field_name)
    elif fmt == "jsonl":
        source = _open_jsonl(stream, name, field_name)
    else:
        raise InvalidInput(
            f"{fmt!r} is not a file format; one of parquet, csv, jsonl", field="format"
        )
    source.closers[:0] = closers
    return source


def _peek(file: IO[bytes], n: int) -> bytes:
    position = file.tell()
    head = file.read(n)
    file.seek(position)
    return head


def _read_error(field_name: str, name: str, e: Exception) -> InvalidInput:
    return InvalidInput(f"{field_name}: cannot read {name}: {e}", field=field_name)


def _open_parquet(file: IO[bytes], field_name: str) -> TableSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as e:
        raise InvalidInput(
            f"{field_name} is not a readable parquet file: {e}", field=field_name
        ) from None
    columns = list(parquet.schema_arrow.names)

    def rows(wanted: list[str]) -> Rows:
        number = 0
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                for row in batch.to_pylist():
                    number += 1
                    yield f"row {number}", row
        except (pa.ArrowException, OSError) as e:
            raise InvalidInput(
                f"{field_name}: parquet data after row {number} is unreadable: {e}",
                field=field_name,
            ) from None

    return TableSource(columns, rows, "parquet", [parquet])


def _open_csv(stream: IO[bytes], name: str, field_name: str) -> TableSource:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    delimiter = "\t" if name.lower().removesuffix(".gz").endswith(".tsv") else ","

    def lines() -> Iterator[str]:
        while True:
            try:
                line = text.readline(MAX_RECORD_BYTES + 1)
            except UnicodeDecodeError as e:
                raise InvalidInput(f"{field_name} is not UTF-8: {e}", field=field_name) from None
            except (OSError, EOFError) as e:
                raise _read_error(field_name, name, e) from None
            if not line:
                return
            if len(line) > MAX_RECORD_BYTES:
                raise InvalidInput(
                    f"{field_name} has a line longer than {MAX_RECORD_BYTES} characters",
                    field=field_name,
                )
            yield line

    csv.field_size_limit(MAX_RECORD_BYTES)
    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise InvalidInput(
            f"{field_name}: the CSV header is malformed: {e}", field=field_name
        ) from None
    if not header:
        raise InvalidInput(f"{field_name} has no CSV header row", field=field_name)
    if len(set(header)) != len(header) or not all(header):
        raise InvalidInput(
            f"{field_name}: CSV header names must be non-empty and distinct, got {header[:20]}",
            field=field_name,
        )

    def rows(_: list[str]) -> Rows:
        number = 0
        try:
            for cells in reader:
                if not cells:
                    continue
                number += 1
                if len(cells) != len(header):
                    raise InvalidInput(
                        f"row {number} has {len(cells)} fields; the header has {len(header)}",
                        field=f"row {number}",
                    )
                yield f"row {number}", dict(zip(header, cells, strict=True))
        except csv.Error as e:
            raise InvalidInput(
                f"row {number + 1}: malformed CSV: {e}", field=f"row {number + 1}"
            ) from None

    return TableSource(header, rows, "csv", [text])


def _open_jsonl(stream: IO[bytes], name: str, field_name: str) -> TableSource:
    reader = JsonlReader(field_name)

    def raw() -> Rows:
        while True:
            try:
                chunk = stream.read(READ_BYTES)
            except (OSError, EOFError) as e:
                raise _read_error(field_name, name, e) from None
            items = reader.feed(chunk) if chunk else reader.close()
            for item in items:
                if not isinstance(item.value, dict):
                    raise InvalidInput(
                        f"{item.location}: a row must be a JSON object, got "
                        f"{type(item.value).__name__}",
                        field=item.location,
                    )
                yield item.location, item.value
            if not chunk:
                return

    rows = raw()
    first = next(rows, None)
    if first is None:
        raise InvalidInput(f"{field_name} has no rows", field=field_name)

    def chained(_: list[str]) -> Rows:
        yield first
        yield from rows

    return TableSource(list(first[1]), chained, "jsonl")


# --- load_from_disk folders and the hub ---------------------------------------------------------


def open_hf_disk(path: Path, split: str | None, field_name: str = "source") -> TableSource:
    """A ``datasets.save_to_disk`` folder: a Dataset, or a DatasetDict and a ``split``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=False)
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        raise InvalidInput(
            f"{field_name}.path is not a readable load_from_disk folder: {e}",
            field=f"{field_name}.path",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            raise InvalidInput(
                f"{field_name}.split: give one of the folder's splits {splits}"
                + (f", not {split!r}" if split is not None else ""),
                field=f"{field_name}.split",
            )
        table = loaded[split]
    else:
        own = None if loaded.split is None else str(loaded.split)
        if split is not None and split != own:
            raise InvalidInput(
                f"{field_name}.split: the folder holds one split ({own or 'unnamed'}), not "
                f"{split!r}; omit split",
                field=f"{field_name}.split",
            )
        table = loaded
    return _dataset_source(table, "hf_disk")


def _dataset_source(table: Any, description: str) -> TableSource:
    def reader(wanted: list[str]) -> Rows:
        number = 0
        for batch in table.select_columns(wanted).iter(batch_size=BATCH_ROWS):
            for values in zip(*(batch[c] for c in wanted), strict=True):
                number += 1
                yield f"row {number}", dict(zip(wanted, values, strict=True))

    return TableSource(list(table.column_names), reader, description)


def open_hub(
    hub_id: str, config: str | None, split: str | None, field_name: str = "source"
) -> TableSource:
    """A hub dataset, streamed (``datasets.load_dataset(..., streaming=True)``): only where
    the operator turned ``SIFT_IMPORT_HUB`` on and the hub is reachable."""
    import datasets

    if split is None:
        raise InvalidInput(
            f"{field_name}.split is required for a hub dataset", field=f"{field_name}.split"
        )
    try:
        table = datasets.load_dataset(hub_id, name=config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - the hub library raises many kinds; all are the input's
        raise InvalidInput(
            f"{field_name}.hub: cannot load {hub_id!r}: {e}", field=f"{field_name}.hub"
        ) from None
    columns = list(table.column_names or [])

    def reader(_: list[str]) -> Rows:
        for number, row in enumerate(table, start=1):
            yield f"row {number}", row

    return TableSource(columns, reader, "hub")


def read_mapped(
    source: TableSource, mapping: ColumnMapping, limit_bytes: int | None = None
) -> Iterator[RawRecord]:
    """The source's rows as records: the mapping's columns checked first, then read (only
    those columns, where the format allows)."""
    if source.columns or source.description != "hub":  # a streamed hub dataset may not say
        mapping.check_columns(source.columns)
    return mapping.records(source.read(mapping.columns(source.columns)), limit_bytes)


def open_path(path: Path, fmt: str, split: str | None, field_name: str = "source") -> TableSource:
    """A local file or ``load_from_disk`` folder (``fmt`` ``auto`` tells which by its kind and
    name). The CLI reads its own files with this; the API only after
    :func:`resolve_source_path`."""
    if fmt == "auto":
        fmt = "hf_disk" if path.is_dir() else ""
    if fmt == "hf_disk":
        if not path.is_dir():
            raise InvalidInput(
                f"{field_name}.path: a load_from_disk source is a folder",
                field=f"{field_name}.path",
            )
        return open_hf_disk(path, split, field_name)
    if path.is_dir():
        raise InvalidInput(
            f"{field_name}.path is a folder; format {fmt} reads a file",
            field=f"{field_name}.path",
        )
    if split is not None:
        raise InvalidInput(
            f"{field_name}.split applies to load_from_disk folders and hub datasets only",
            field=f"{field_name}.split",
        )
    file = path.open("rb")
    try:
        if not fmt:
            fmt = detect_format(path.name, _peek(file, 4), f"{field_name}.format")
        source = open_file(file, fmt, name=path.name, field_name=f"{field_name}.path")
    except BaseException:
        file.close()
        raise
    source.closers.insert(0, file)
    return source


# --- server-side paths --------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_source_path(raw: str, roots: Sequence[str], field_name: str = "source.path") -> Path:
    """The real path of a server-side source, refused unless it lies inside an import root.

    ``raw`` is absolute or relative to the roots (tried in order). Symlinks are resolved
    before the check, so a link inside a root that points outside is refused; a folder is
    walked and must hold no such link and name no data file outside itself
    (``state.json``'s ``_data_files``, ``dataset_dict.json``'s splits). The message is the
    same whether or not a refused path exists, so it reveals nothing about the server's files.
    """
    if not roots:
        raise InvalidInput(
            f"{field_name}: server-side imports are off: the operator lists the folders they "
            "may read in SIFT_IMPORT_ROOTS (upload the file instead)",
            field=field_name,
        )
    if not raw or "\x00" in raw:
        raise InvalidInput(f"{field_name} must be a non-empty path", field=field_name)
    real_roots = [os.path.realpath(r) for r in roots]
    candidates = [raw] if raw.startswith("/") else [os.path.join(r, raw) for r in roots]
    outside = InvalidInput(
        f"{field_name} {raw!r} is not inside an import root (SIFT_IMPORT_ROOTS), or does not "
        "exist there",
        field=field_name,
    )
    for candidate in candidates:
        real = os.path.realpath(candidate)
        root = next((r for r in real_roots if _inside(real, r)), None)
        if root is None or not (os.path.isfile(real) or os.path.isdir(real)):
            continue  # outside, missing, or not a regular file or folder (a FIFO, a device)
        if os.path.isdir(real):
            _check_folder(real, root, raw, field_name)
        return Path(real)
    raise outside


def _check_folder(folder: str, root: str, raw: str, field_name: str) -> None:
    def escape(what: str) -> InvalidInput:
        return InvalidInput(
            f"{field_name} {raw!r}: {what} leads outside the import root", field=field_name
        )

    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            entry = os.path.join(current, name)
            if os.path.islink(entry) and not _inside(os.path.realpath(entry), root):
                raise escape(f"the link {os.path.relpath(entry, folder)!r}")
        for name in files:
            if name not in ("state.json", "dataset_dict.json"):
                continue
            try:
                meta = json.loads(Path(current, name).read_text())
            except (OSError, ValueError):
                continue  # datasets refuses it with its own message
            named = (
                [f.get("filename", "") for f in meta.get("_data_files", [])]
                if name == "state.json"
                else list(meta.get("splits", []))
            )
            for item in named:
                if not isinstance(item, str) or not _inside(
                    os.path.realpath(os.path.join(current, item)), os.path.realpath(current)
                ):
                    raise escape(f"{name}'s entry {str(item)!r}")
