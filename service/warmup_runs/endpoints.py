from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Annotated, Any, BinaryIO, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from service import deletion
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.blobs import BlobNotFound
from service.config import Settings, get_settings
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
from service.uploads import MAX_TEXT_BYTES, MultipartStream, body_chunks, part_text
from service.warmup_runs import service
from service.warmup_runs.schemas import WarmupRunRead

router = APIRouter(prefix="/warmup-runs", tags=["warmup runs"])
SettingsDep = Annotated[Settings, Depends(get_settings)]
N = TypeVar("N", int, float)

MAX_CHECKPOINTS = 1000
MAX_FORM_PARTS = 3 * MAX_CHECKPOINTS + 2
"""model_id, lora_alpha and a step, a learning rate and an adapter per checkpoint."""
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
                            "items": {"type": "integer", "minimum": 0, "maximum": service.MAX_STEP},
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


class _RunForm:
    """The checkpoint-run form as it streams in: its short text fields kept, each adapter
    written to an anonymous temporary file as its bytes arrive (deleted on close), so the API
    holds one chunk of the body at a time whatever the files' size."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}
        self.adapters: list[tuple[str, BinaryIO]] = []
        self._name: str | None = None
        self._file: BinaryIO | None = None
        self._text = bytearray()

    def start(self, name: str, filename: str | None) -> None:
        if name not in FORM_FIELDS:
            raise InvalidInput(
                f"unknown form field {name!r}; expected {list(FORM_FIELDS)}", field=name
            )
        if name == "adapters":
            i = len(self.adapters)
            if filename is None:
                raise InvalidInput(
                    "each 'adapters' part must be a file (a safetensors adapter)",
                    field=f"adapters.{i}",
                )
            if i >= MAX_CHECKPOINTS:
                raise InvalidInput(
                    f"a run has at most {MAX_CHECKPOINTS} checkpoints", field="adapters"
                )
            self._file = cast(BinaryIO, tempfile.TemporaryFile())
            self.adapters.append((filename or f"adapters.{i}", self._file))
        elif filename is not None:
            i = len(self.texts.get(name, []))
            raise InvalidInput(f"form field {name!r} must be text, not a file", field=f"{name}.{i}")
        self._name = name
        self._text.clear()

    def data(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)
            return
        self._text += chunk
        if len(self._text) > MAX_TEXT_BYTES:
            raise InvalidInput(
                f"form field {self._name!r} is longer than {MAX_TEXT_BYTES} bytes",
                field=self._name,
            )

    def end(self) -> None:
        if self._file is not None:
            self._file.flush()
        elif self._name is not None:
            self.texts.setdefault(self._name, []).append(part_text(self._name, bytes(self._text)))
        self._name, self._file = None, None

    def close(self) -> None:
        for _, f in self.adapters:
            f.close()

    def _one(self, name: str) -> str:
        values = self.texts.get(name, [])
        if not values or not values[0]:
            raise InvalidInput(f"form field {name!r} is required", field=name)
        if len(values) > 1:
            raise InvalidInput(f"form field {name!r} was sent {len(values)} times", field=name)
        return values[0]

    def upload(self) -> service.RunUpload:
        return service.RunUpload(
            model_id=self._one("model_id"),
            lora_alpha=_number(self._one("lora_alpha"), float, "lora_alpha"),
            steps=[
                _number(s, int, f"steps.{i}") for i, s in enumerate(self.texts.get("steps", []))
            ],
            learning_rates=[
                _number(lr, float, f"learning_rates.{i}")
                for i, lr in enumerate(self.texts.get("learning_rates", []))
            ],
            adapters=self.adapters,
        )


def _number(text: str, parse: Callable[[str], N], field: str) -> N:
    try:
        return parse(text)
    except ValueError:
        kind = "an integer" if parse is int else "a number"
        raise InvalidInput(f"{field} must be {kind}, got {text!r}", field=field) from None


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

    The body streams: each adapter goes to a temporary file as it arrives, is checked from
    there and then streamed to the blob store, so the API's memory does not grow with the
    files; the limit (`SIFT_MAX_CHECKPOINT_UPLOAD_BYTES`) is enforced while they stream.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {content_type or 'none'!r}: send multipart/form-data"
        )
    form = _RunForm()
    try:
        stream = MultipartStream(
            request.headers.get("content-type", ""), form, max_parts=MAX_FORM_PARTS
        )
        async for chunk in body_chunks(request, settings.max_checkpoint_upload_bytes):
            await run_in_threadpool(stream.write, chunk)
        stream.close()
        upload = form.upload()

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
        form.close()
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


@router.get(
    "/{warmup_run_id}/plot.{fmt}",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in service.PLOT_FORMATS.values()}},
        **error_responses(NotFound, Conflict),
    },
)
def get_plot(
    warmup_run_id: str, fmt: Literal["png", "svg"], session: SessionDep, blobs: BlobStoreDep
) -> Response:
    """The training loss per step with each epoch's mean, and the learning rate, of a
    Sift-trained warmup run; 409 while it trains, 404 for uploaded runs (no curve)."""
    key = service.plot_key(session, warmup_run_id, fmt)
    try:
        content = blobs.get_bytes(key)
    except BlobNotFound:
        raise NotFound(f"the plot of warmup run {warmup_run_id} is missing ({key})") from None
    return Response(content, media_type=service.PLOT_FORMATS[fmt])


@router.delete(
    "/{warmup_run_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def delete_warmup_run(
    warmup_run_id: str, session: SessionDep, blobs: BlobStoreDep, cascade: CascadeQuery = False
) -> Response:
    """Delete a run of checkpoints (uploaded or Sift-trained) with its files and the features
    stored at its checkpoints.

    409 while a valuation or study uses it, or a queued or running valuation of the same pool
    may be reusing it: the message names each; delete them first, or pass ``cascade=true`` to
    delete them with it (a queued or running one is cancelled). A Sift-trained run goes by
    itself once no valuation or study uses it; an uploaded one only through this route.
    """
    deleted = deletion.delete_resource(session, "warmup_run", warmup_run_id, cascade=cascade)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)
