"""Errors that carry their HTTP status, and the handlers that render them.

Every error response has one shape: ``{"error": {"code", "message", "field"}}``. Endpoints list
the classes they may raise in ``responses=error_responses(...)`` so the OpenAPI shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class SiftError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    description: ClassVar[str] = "Internal error"

    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class Unauthorized(SiftError):
    status_code = 401
    code = "unauthorized"
    description = "Missing, malformed, unknown or revoked API key (`Authorization: Bearer <key>`)"
    headers = {"WWW-Authenticate": 'Bearer realm="sift"'}


class Forbidden(SiftError):
    status_code = 403
    code = "forbidden"
    description = "The key's role may not do this (read_only keys only read; keys are admin's)"


class NotFound(SiftError):
    status_code = 404
    code = "not_found"
    description = "Not found"


class InvalidInput(SiftError):
    status_code = 422
    code = "invalid_input"
    description = "Invalid input; `field` names the offending field"


class Conflict(SiftError):
    status_code = 409
    code = "conflict"
    description = "Conflicts with the current state"


class PayloadTooLarge(SiftError):
    status_code = 413
    code = "payload_too_large"
    description = (
        "Upload larger than its limit (SIFT_MAX_UPLOAD_BYTES; SIFT_MAX_CHECKPOINT_UPLOAD_BYTES "
        "for checkpoint runs)"
    )


class ServiceUnavailable(SiftError):
    status_code = 503
    code = "unavailable"
    description = "A backing service (database, broker, blob store) is unavailable"


class UnsupportedMediaType(SiftError):
    status_code = 415
    code = "unsupported_media_type"
    description = "Unsupported Content-Type"


def error_responses(*errors: type[SiftError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error classes (422 is always included)."""
    out: dict[int | str, dict[str, Any]] = {}
    classes: tuple[type[SiftError], ...] = (*errors, InvalidInput)
    for err in classes:
        out[err.status_code] = {"model": ErrorResponse, "description": err.description}
    return out


def _loc_to_field(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _sift_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SiftError)  # registered for SiftError only
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _loc_to_field(first.get("loc", ())) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    body = {"error": {"code": "validation_error", "message": message, "field": field}}
    return JSONResponse(body, status_code=422)


async def _http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = {"error": {"code": "http_error", "message": str(exc.detail), "field": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SiftError, _sift_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
