from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message, Receive

from service.auth.dependencies import BlobStoreDep, SessionDep
from service.config import Settings, get_settings
from service.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_responses,
)
from service.pagination import Page, PaginationDep
from service.warmup_runs import service
from service.warmup_runs.schemas import WarmupRunRead

router = APIRouter(prefix="/warmup-runs", tags=["warmup runs"])
SettingsDep = Annotated[Settings, Depends(get_settings)]
N = TypeVar("N", int, float)

MAX_CHECKPOINTS = 1000
FORM_FIELDS = ("model_id", "lora_alpha", "steps", "learning_rates", "adapters")

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": list(FORM_FIELDS),
                    "properties": {
                        "model_id": {"type": "string", "description": "a registered model"},
                        "lora_alpha": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "description": "the LoRA alpha the adapters were trained with",
                        },
                        "steps": {
                            "type": "array",
                            "items": {"type": "integer", "minimum": 0},
                            "description": "one per checkpoint, strictly increasing",
                        },
                        "learning_rates": {
                            "type": "array",
                            "items": {"type": "number", "exclusiveMinimum": 0},
                            "description": "one per checkpoint: the learning rate at that step",
                        },
                        "adapters": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": MAX_CHECKPOINTS,
                            "description": "one PEFT LoRA adapter (safetensors) per checkpoint, "
                            "in the order of steps",
                        },
                    },
                },
            },
        },
    }
}

_EXISTING: dict[int | str, dict[str, Any]] = {
    200: {"model": WarmupRunRead, "description": "The same content was uploaded before: that run"}
}


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that stops a body over ``limit`` bytes, declared length or not."""
    size = 0

    async def wrapped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return message

    return wrapped


def _texts(form: FormData, name: str) -> list[str]:
    values = form.getlist(name)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidInput(f"form field {name!r} must be text, not a file", field=f"{name}.{i}")
    return [str(v).strip() for v in values]


def _one(form: FormData, name: str) -> str:
    values = _texts(form, name)
    if not values or not values[0]:
        raise InvalidInput(f"form field {name!r} is required", field=name)
    if len(values) > 1:
        raise InvalidInput(f"form field {name!r} was sent {len(values)} times", field=name)
    return values[0]


def _number(text: str, parse: Callable[[str], N], field: str) -> N:
    try:
        return parse(text)
    except ValueError:
        kind = "an integer" if parse is int else "a number"
        raise InvalidInput(f"{field} must be {kind}, got {text!r}", field=field) from None


def _parse_form(form: FormData) -> service.RunUpload:
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown form field(s) {unknown}; expected {list(FORM_FIELDS)}", field=unknown[0]
        )
    adapters: list[tuple[str, Any]] = []
    for i, upload in enumerate(form.getlist("adapters")):
        if not isinstance(upload, UploadFile):
            raise InvalidInput(
                "each 'adapters' part must be a file (a safetensors adapter)",
                field=f"adapters.{i}",
            )
        adapters.append((upload.filename or f"adapters.{i}", upload.file))
    return service.RunUpload(
        model_id=_one(form, "model_id"),
        lora_alpha=_number(_one(form, "lora_alpha"), float, "lora_alpha"),
        steps=[_number(s, int, f"steps.{i}") for i, s in enumerate(_texts(form, "steps"))],
        learning_rates=[
            _number(lr, float, f"learning_rates.{i}")
            for i, lr in enumerate(_texts(form, "learning_rates"))
        ],
        adapters=adapters,
    )


@router.post(
    "",
    status_code=201,
    response_model=WarmupRunRead,
    summary="Upload a run of LoRA checkpoints (one safetensors adapter per step)",
    responses={**_EXISTING, **error_responses(PayloadTooLarge, UnsupportedMediaType)},
    openapi_extra=_UPLOAD_BODY,
)
async def upload_warmup_run(
    request: Request,
    response: Response,
    session: SessionDep,
    blobs: BlobStoreDep,
    settings: SettingsDep,
) -> Any:
    """Store a run of LoRA checkpoints trained elsewhere, for strategy studies.

    Each adapter must be a PEFT LoRA adapter in safetensors (pickle checkpoints are refused,
    never loaded), all with the same tensors; r and target_modules are read from them. A
    rejected upload stores nothing; the same upload again returns the existing run (200).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {content_type or 'none'!r}: send multipart/form-data"
        )
    limit = settings.max_checkpoint_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    form = await Request(request.scope, _limited(request.receive, limit)).form(
        max_files=MAX_CHECKPOINTS, max_fields=2 * MAX_CHECKPOINTS + 2
    )
    try:
        upload = _parse_form(form)

        def store() -> tuple[WarmupRunRead, bool]:
            checked = service.check_upload(session, upload)
            run, created = service.create_upload(session, blobs, checked)
            try:
                session.commit()
            except BaseException:
                if created:
                    service.discard_blobs(blobs, run.id)
                raise
            return service.to_read(run), created

        run, created = await run_in_threadpool(store)
    finally:
        await form.close()
    if not created:
        response.status_code = 200
    return run


@router.get("", response_model=Page[WarmupRunRead])
def list_warmup_runs(session: SessionDep, page: PaginationDep) -> Any:
    """Sift-trained and uploaded runs, newest first."""
    return service.list_runs(session, page)


@router.get("/{warmup_run_id}", response_model=WarmupRunRead, responses=error_responses(NotFound))
def get_warmup_run(warmup_run_id: str, session: SessionDep) -> Any:
    return service.to_read(service.get_run(session, warmup_run_id))
