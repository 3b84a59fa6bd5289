from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, ValidationError
from sqlalchemy.orm import Session

from service.auth.dependencies import BlobStoreDep, PrincipalDep, SessionDep
from service.config import Settings, get_settings
from service.datasets import imports, service
from service.datasets.parsing import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECORD_BYTES,
    RECORD_FIELDS,
    JsonlReader,
    RawRecord,
    check_strings,
    load_body,
    loads_strict,
    may_hold_bad_chars,
)
from service.datasets.schemas import (
    EXAMPLE_RECORDS,
    DatasetCreate,
    DatasetImport,
    DatasetRead,
    RecordRead,
)
from service.db.models import Dataset
from service.deletion import CascadeQuery
from service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_responses,
)
from service.pagination import Page, PaginationDep
from service.uploads import MAX_TEXT_BYTES, MultipartStream, body_chunks, part_text, read_body

router = APIRouter(prefix="/datasets", tags=["datasets"])
SettingsDep = Annotated[Settings, Depends(get_settings)]

MAX_NAME_LENGTH = 200
MAX_RECORD_ID_FILTER = 200
"""How many ``record_id`` values one records request may name."""

_EXAMPLE_JSONL = "\n".join(
    [
        '{"id": "ex-1", "prompt": "Name a prime number greater than 10.", "response": "11"}',
        '{"messages": [{"role": "user", "content": "Hi"}, '
        '{"role": "assistant", "content": "Hello!"}], "subtask": "chat"}',
    ]
)

_RECORD_RULES = (
    f"A record has only the fields {', '.join(RECORD_FIELDS)} (anything else is a 422: put it in "
    f"metadata); no string or key may hold NUL or a lone surrogate; metadata nests at most "
    f"{MAX_METADATA_DEPTH} levels and is at most {MAX_METADATA_BYTES} bytes as JSON."
)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    **DatasetCreate.model_json_schema(),
                    "description": "Read into memory whole, so its limit is the smaller "
                    "SIFT_MAX_JSON_UPLOAD_BYTES; send large datasets as a multipart JSONL file, "
                    "which streams. " + _RECORD_RULES,
                },
                "example": {"name": "demo-pool", "records": EXAMPLE_RECORDS},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL, one record per line (at most "
                            f"{MAX_RECORD_BYTES} bytes a line), UTF-8. Parsed and stored as it "
                            "streams in, up to SIFT_MAX_UPLOAD_BYTES. " + _RECORD_RULES,
                        },
                    },
                    "additionalProperties": False,
                },
                "example": {"name": "demo-pool", "file": _EXAMPLE_JSONL},
            },
        },
    }
}


def _check_name(name: str | None) -> str:
    if name is None or not name.strip():
        raise InvalidInput("form field 'name' is required", field="name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name must have at most {MAX_NAME_LENGTH} characters", field="name")
    check_strings("name", name)
    return name


class _DatasetForm:
    """The multipart form as it streams: a text ``name`` and a JSONL ``file``, in any order.

    The file's records go to the upload (and so to the database) a chunk at a time.
    """

    def __init__(self, upload: service.DatasetUpload) -> None:
        self.upload = upload
        self.name: str | None = None
        self.reader: JsonlReader | None = None
        self._current: str | None = None
        self._text = bytearray()

    def start(self, name: str, filename: str | None) -> None:
        if name not in ("name", "file"):
            raise InvalidInput(
                f"unknown form field {name!r}; the form has 'name' and 'file'", field=name
            )
        if (name == "name" and self.name is not None) or (name == "file" and self.reader):
            raise InvalidInput(f"form field {name!r} was sent twice", field=name)
        self._current = name
        if name == "file":
            self.reader = JsonlReader("file")
        self._text.clear()

    def data(self, chunk: bytes) -> None:
        if self._current == "file" and self.reader is not None:
            self.upload.add(self.reader.feed(chunk))
            return
        self._text += chunk
        if len(self._text) > MAX_TEXT_BYTES:
            raise InvalidInput(f"name must have at most {MAX_NAME_LENGTH} characters", field="name")

    def end(self) -> None:
        if self._current == "file" and self.reader is not None:
            self.upload.add(self.reader.close())
        else:  # checked now, so a bad name fails before the file streams
            self.name = _check_name(part_text("name", bytes(self._text), strip=False))
        self._current = None

    def finish(self) -> Dataset:
        name = _check_name(self.name)
        if self.reader is None:
            raise InvalidInput("form field 'file' (JSONL) is required", field="file")
        return self.upload.finish(name)


async def _store_multipart(request: Request, upload: service.DatasetUpload, limit: int) -> Dataset:
    form = _DatasetForm(upload)
    stream = MultipartStream(request.headers.get("content-type", ""), form, max_parts=2)
    async for chunk in body_chunks(request, limit):
        await run_in_threadpool(stream.write, chunk)
    stream.close()
    return await run_in_threadpool(form.finish)


def _store_json(body: bytes, upload: service.DatasetUpload) -> Dataset:
    value = load_body(body)
    try:
        request = DatasetCreate.model_validate(value)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from None
    check_strings("body.name", request.name)
    scan = may_hold_bad_chars(body)
    upload.add(RawRecord(f"records.{i}", item, scan) for i, item in enumerate(request.records))
    return upload.finish(request.name)


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    summary="Upload a dataset (JSONL file or JSON body)",
    responses=error_responses(PayloadTooLarge, UnsupportedMediaType),
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep) -> Any:
    """Store a dataset; a rejected upload stores nothing.

    A multipart JSONL file is parsed and stored as it streams in (the API's memory does not grow
    with its size), up to `SIFT_MAX_UPLOAD_BYTES`; the JSON form is read whole into memory, so
    it is limited to the smaller `SIFT_MAX_JSON_UPLOAD_BYTES`. Records go in, in batches, in one
    transaction that is rolled back if any record is bad or the limit is crossed. Exact
    duplicates (same normalized messages) are skipped and listed in ``duplicates``.
    """
    multipart = _is_multipart(request)
    upload = service.DatasetUpload(session, "file" if multipart else "records")

    async def produce() -> Dataset:
        if multipart:
            return await _store_multipart(request, upload, settings.max_upload_bytes)
        limit = min(settings.max_json_upload_bytes, settings.max_upload_bytes)
        try:
            body = await read_body(request, limit)
        except PayloadTooLarge as e:
            raise PayloadTooLarge(
                f"{e.message} (SIFT_MAX_JSON_UPLOAD_BYTES: a JSON body is read whole); send "
                "a larger dataset as a multipart JSONL file, which streams"
            ) from None
        return await run_in_threadpool(_store_json, body, upload)

    return await _stored(session, upload, produce)


def _is_multipart(request: Request) -> bool:
    """A multipart body (True) or a JSON one (False); any other type is a 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            f"content type {content_type or 'none'!r}: send application/json or multipart/form-data"
        )
    return content_type == "multipart/form-data"


async def _stored(
    session: Session, upload: service.DatasetUpload, produce: Callable[[], Awaitable[Dataset]]
) -> DatasetRead:
    """Fill ``upload`` (``produce``), commit and read the dataset back; whatever is raised on
    the way rolls it all back, so a rejected upload or import stores nothing."""
    try:
        dataset = await produce()

        def commit() -> DatasetRead:
            session.commit()
            return service.read_many(session, [dataset])[0]

        return await run_in_threadpool(commit)
    except BaseException:
        session.rollback()
        raise
    finally:
        upload.close()


# --- imports: a table with a column mapping ---------------------------------------------------

MAX_MAPPING_BYTES = 16 * 1024
_UPLOAD_FORMATS = ("auto", "parquet", "csv", "jsonl")
_MAPPING_DOC = (
    "JSON object naming, for each Sift record field, the source column it comes from: "
    '{"prompt": col, "response": col} or {"messages": col} (a list of {role, content}), '
    'optional "subtask", "id" (columns) and "metadata" (a list of columns, copied under their '
    "names); a dotted name (doc.question) reaches into a nested object. A mapping naming a "
    "column the source lacks is a 422 naming it; numbers and "
    "booleans in text fields are written out; an empty response cell makes a prompt-only record."
)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place: a ``#/$defs/...`` reference
    inside the OpenAPI document would resolve against the document's root, where there is
    none."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return dict(walk(schema))


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "mapping", "file"],
                    "properties": {
                        "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
                        "mapping": {
                            "type": "string",
                            "maxLength": MAX_MAPPING_BYTES,
                            "description": _MAPPING_DOC,
                        },
                        "format": {
                            "type": "string",
                            "enum": list(_UPLOAD_FORMATS),
                            "description": "auto (default): told by the file name (.parquet, "
                            ".csv, .tsv, .jsonl, .ndjson, each CSV/JSONL optionally .gz)",
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "parquet (read by record batches), CSV with a "
                            "header row (UTF-8), or JSONL (one object a line); CSV and JSONL "
                            "may be gzipped. Spooled to a temporary file as it streams in (up "
                            "to SIFT_MAX_UPLOAD_BYTES), then read a batch of rows at a time; "
                            "its records may total SIFT_MAX_UPLOAD_BYTES as JSON. " + _RECORD_RULES,
                        },
                    },
                    "additionalProperties": False,
                },
                "example": {
                    "name": "gsm8k",
                    "mapping": '{"prompt": "question", "response": "answer"}',
                    "file": '{"question": "What is 2 + 3?", "answer": "5"}\n',
                },
            },
            "application/json": {
                "schema": {
                    **_inlined(DatasetImport.model_json_schema()),
                    "description": "A server-side source: a path under the operator's "
                    "SIFT_IMPORT_ROOTS (refused when none are set) or a hub id (refused unless "
                    "SIFT_IMPORT_HUB). " + _MAPPING_DOC,
                },
                "example": {
                    "name": "arc-easy",
                    "source": {"path": "ai2_arc/ARC-Easy/validation"},
                    "mapping": {"prompt": "question", "response": "answerKey", "id": "id"},
                },
            },
        },
    }
}


class _ImportForm:
    """The multipart import form: text ``name``, ``mapping``, ``format`` and a ``file`` spooled
    to ``spool`` as it arrives (any order: the file is read once the form is complete)."""

    PARTS = ("name", "mapping", "format", "file")

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.name: str | None = None
        self.mapping: imports.ColumnMapping | None = None
        self.format = "auto"
        self.filename: str | None = None
        self._seen: set[str] = set()
        self._current: str | None = None
        self._text = bytearray()

    def start(self, name: str, filename: str | None) -> None:
        if name not in self.PARTS:
            raise InvalidInput(
                f"unknown form field {name!r}; the form has {', '.join(map(repr, self.PARTS))}",
                field=name,
            )
        if name in self._seen:
            raise InvalidInput(f"form field {name!r} was sent twice", field=name)
        self._seen.add(name)
        self._current = name
        if name == "file":
            self.filename = filename or "file"
        self._text.clear()

    def data(self, chunk: bytes) -> None:
        if self._current == "file":
            self.spool.write(chunk)
            return
        self._text += chunk
        limit = MAX_MAPPING_BYTES if self._current == "mapping" else MAX_TEXT_BYTES
        if len(self._text) > limit:
            raise InvalidInput(
                f"form field {self._current!r} is longer than {limit} bytes", field=self._current
            )

    def end(self) -> None:
        current, self._current = self._current, None
        if current == "name":
            self.name = _check_name(part_text("name", bytes(self._text), strip=False))
        elif current == "mapping":
            text = part_text("mapping", bytes(self._text))
            self.mapping = imports.ColumnMapping.from_text(text, "mapping")
        elif current == "format":
            value = part_text("format", bytes(self._text))
            if value not in _UPLOAD_FORMATS:
                raise InvalidInput(
                    f"format must be one of {', '.join(_UPLOAD_FORMATS)}, got {value!r}",
                    field="format",
                )
            self.format = value

    def finish(self, upload: service.DatasetUpload, limit_bytes: int) -> Dataset:
        name = _check_name(self.name)
        if self.mapping is None:
            raise InvalidInput("form field 'mapping' (JSON) is required", field="mapping")
        if self.filename is None:
            raise InvalidInput("form field 'file' is required", field="file")
        self.spool.seek(0)
        fmt = self.format
        if fmt == "auto":
            head = self.spool.read(4)
            self.spool.seek(0)
            fmt = imports.detect_format(self.filename, head)
        source = imports.open_file(self.spool, fmt, name=self.filename, field_name="file")
        try:
            upload.add(imports.read_mapped(source, self.mapping, limit_bytes))
        finally:
            source.close()
        return upload.finish(name)


async def _import_multipart(
    request: Request, upload: service.DatasetUpload, settings: Settings
) -> Dataset:
    limit = settings.max_upload_bytes
    with tempfile.TemporaryFile(prefix="sift-import-") as spool:
        form = _ImportForm(spool)
        stream = MultipartStream(request.headers.get("content-type", ""), form, max_parts=4)
        async for chunk in body_chunks(request, limit):
            await run_in_threadpool(stream.write, chunk)
        stream.close()
        return await run_in_threadpool(form.finish, upload, limit)


def _import_server_side(
    body: bytes, upload: service.DatasetUpload, settings: Settings, tenant_id: str
) -> Dataset:
    try:
        value = loads_strict(body)
    except ValueError as e:
        raise InvalidInput(f"body is not valid JSON: {e}", field="body") from None
    try:
        request = DatasetImport.model_validate(value)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from None
    check_strings("body", value)
    mapping = imports.ColumnMapping.from_model(request.mapping, "body.mapping")
    spec = request.source
    if spec.hub is not None:
        if not settings.import_hub:
            raise InvalidInput(
                "body.source.hub: importing from the Hugging Face hub is off on this server "
                "(the operator sets SIFT_IMPORT_HUB=true where a hub is reachable)",
                field="body.source.hub",
            )
        if spec.format not in ("auto", "hf_disk"):
            raise InvalidInput(
                "body.source.format does not apply to a hub dataset", field="body.source.format"
            )
        source = imports.open_hub(spec.hub, spec.config, spec.split, "body.source")
    else:
        path = imports.resolve_source_path(
            spec.path or "", settings.import_root_list(tenant_id), "body.source.path"
        )
        source = imports.open_path(path, spec.format, spec.split, "body.source")
    try:
        upload.add(imports.read_mapped(source, mapping))
    finally:
        source.close()
    return upload.finish(request.name)


@router.post(
    "/import",
    status_code=201,
    response_model=DatasetRead,
    summary="Import a table (parquet, CSV, JSONL, a load_from_disk folder) with a column mapping",
    responses=error_responses(PayloadTooLarge, UnsupportedMediaType),
    openapi_extra=_IMPORT_BODY,
)
async def import_dataset(
    request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> Any:
    """Store a dataset read from a table whose columns ``mapping`` maps to record fields; a
    rejected import stores nothing.

    Multipart: an uploaded ``file`` (parquet, CSV, JSONL; CSV/JSONL may be gzipped). JSON: a
    server-side ``source``, a path inside one of the operator's import roots
    (``SIFT_IMPORT_ROOTS``; none set: refused, 422 on ``body.source.path``; a path whose real
    location, links resolved, is outside them: refused the same way) or a hub id (only with
    ``SIFT_IMPORT_HUB``). Rows become records exactly as an upload's do (the same rules,
    duplicates skipped and listed), in one transaction rolled back on the first bad row.
    """
    multipart = _is_multipart(request)
    upload = service.DatasetUpload(session, "file" if multipart else "body.source")

    async def produce() -> Dataset:
        if multipart:
            return await _import_multipart(request, upload, settings)
        body = await read_body(request, MAX_MAPPING_BYTES + 8192)
        return await run_in_threadpool(
            _import_server_side, body, upload, settings, principal.tenant_id
        )

    return await _stored(session, upload, produce)


@router.get("", response_model=Page[DatasetRead])
def list_datasets(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_datasets(session, page)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=error_responses(NotFound))
def get_dataset(dataset_id: str, session: SessionDep) -> Any:
    return service.read_many(session, [service.get_dataset(session, dataset_id)])[0]


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def delete_dataset(
    dataset_id: str, session: SessionDep, blobs: BlobStoreDep, cascade: CascadeQuery = False
) -> Response:
    """Delete a dataset and its records.

    409 while a valuation, study, score set or curation reads it (finished or not): the message
    names each with its status; delete them first, or pass ``cascade=true`` to delete them with
    it (a queued or running one is cancelled). The stored features and Sift-trained warmup runs
    computed from it are deleted too, unless another dataset with the same content still uses
    them.
    """
    deleted = service.delete_dataset(session, dataset_id, cascade=cascade)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)


RecordIdQuery = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] | None,
    Query(
        max_length=MAX_RECORD_ID_FILTER,
        description=f"only the records with these ids (repeat it, at most "
        f"{MAX_RECORD_ID_FILTER}); ids the dataset lacks are left out",
    ),
]


@router.get(
    "/{dataset_id}/records",
    response_model=Page[RecordRead],
    responses=error_responses(NotFound),
)
def list_records(
    dataset_id: str, session: SessionDep, page: PaginationDep, record_id: RecordIdQuery = None
) -> Any:
    """Records in upload order (``position``).

    With ``record_id`` (repeated: ``?record_id=a&record_id=b``), only the records with those
    ids, still in upload order and paged the same way: ids the dataset lacks are left out, and
    ``total`` counts the records found.
    """
    return service.list_records(session, dataset_id, page, record_id)
