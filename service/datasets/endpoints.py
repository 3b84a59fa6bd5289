from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message

from service.auth.dependencies import SessionDep
from service.config import Settings, get_settings
from service.datasets import service
from service.datasets.parsing import ParsedDataset, loads_strict, parse_jsonl, parse_records
from service.datasets.schemas import EXAMPLE_RECORDS, DatasetCreate, DatasetRead, RecordRead
from service.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_responses,
)
from service.pagination import Page, PaginationDep

router = APIRouter(prefix="/datasets", tags=["datasets"])
SettingsDep = Annotated[Settings, Depends(get_settings)]

_EXAMPLE_JSONL = "\n".join(
    [
        '{"id": "ex-1", "prompt": "Name a prime number greater than 10.", "response": "11"}',
        '{"messages": [{"role": "user", "content": "Hi"}, '
        '{"role": "assistant", "content": "Hello!"}], "subtask": "chat"}',
    ]
)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": DatasetCreate.model_json_schema(),
                "example": {"name": "demo-pool", "records": EXAMPLE_RECORDS},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 200},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL, one record per line",
                        },
                    },
                },
                "example": {"name": "demo-pool", "file": _EXAMPLE_JSONL},
            },
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes) -> tuple[str, ParsedDataset]:
    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    name = form.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("form field 'name' is required", field="name")
    if len(name) > 200:
        raise InvalidInput("name must have at most 200 characters", field="name")
    upload = form.get("file")
    if upload is None:
        raise InvalidInput("form field 'file' (JSONL) is required", field="file")
    data = await upload.read() if isinstance(upload, UploadFile) else upload.encode()
    await form.close()
    items = await run_in_threadpool(parse_jsonl, data, "file")
    parsed = await run_in_threadpool(parse_records, items, "file")
    return name, parsed


def _parse_json(body: bytes) -> tuple[str, ParsedDataset]:
    try:
        value = loads_strict(body)
    except ValueError as e:
        raise InvalidInput(f"body is not valid JSON: {e}", field="body") from None
    try:
        request = DatasetCreate.model_validate(value)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors()]
        raise RequestValidationError(errors) from None
    items = [(f"records.{i}", item) for i, item in enumerate(request.records)]
    return request.name, parse_records(items, "records")


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    summary="Upload a dataset (JSONL file or JSON body)",
    responses=error_responses(PayloadTooLarge, UnsupportedMediaType),
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep) -> Any:
    """Validate every record, then store them all; a rejected upload stores nothing.

    Exact duplicates (same normalized messages) are skipped and listed in ``duplicates``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(
            f"content type {content_type or 'none'!r}: send application/json or multipart/form-data"
        )
    body = await _read_body(request, settings.max_upload_bytes)
    if content_type == "multipart/form-data":
        name, parsed = await _parse_multipart(request, body)
    else:
        name, parsed = await run_in_threadpool(_parse_json, body)

    def store() -> DatasetRead:
        dataset = service.create_dataset(session, name, parsed)
        session.commit()
        return service.to_read(dataset, parsed.subtasks)

    return await run_in_threadpool(store)


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
def delete_dataset(dataset_id: str, session: SessionDep) -> Response:
    """Delete a dataset and its records; refused (409) while a valuation uses it."""
    service.delete_dataset(session, dataset_id)
    session.commit()
    return Response(status_code=204)


@router.get(
    "/{dataset_id}/records",
    response_model=Page[RecordRead],
    responses=error_responses(NotFound),
)
def list_records(dataset_id: str, session: SessionDep, page: PaginationDep) -> Any:
    """Records in upload order (``position``)."""
    return service.list_records(session, dataset_id, page)
