"""Errors that carry their HTTP status, and the handlers that render them.

Every error response has one shape: ``{"error": {"code", "message", "field"}}``. Endpoints list
the classes they may raise in ``responses=error_responses(...)`` so the OpenAPI shows them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


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
    description = (
        "A backing service (database, broker, blob store) is unavailable or busy; retry after "
        "`Retry-After` seconds"
    )
    headers = {"Retry-After": "1"}


class Overloaded(ServiceUnavailable):
    """Answered by ``service.limits`` before any route runs: the process is at
    ``SIFT_MAX_CONCURRENT_REQUESTS`` and no slot freed within ``SIFT_REQUEST_QUEUE_TIMEOUT_S``."""

    code = "overloaded"
    description = "The API is at its request limit; retry after `Retry-After` seconds"


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


def document_unsupported_media_type(openapi: dict[str, Any]) -> None:
    """Add 415 to every operation that takes a JSON body: the validation handler answers it for
    any other Content-Type, whichever route it is."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            content = (operation.get("requestBody") or {}).get("content", {})
            responses = operation.get("responses", {})
            if "application/json" in content and "415" in responses:
                continue
            if "application/json" in content and "422" in responses:
                responses["415"] = {
                    **responses["422"],
                    "description": UnsupportedMediaType.description,
                }


def _loc_to_field(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _sift_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SiftError)  # registered for SiftError only
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _validation_body(code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes):
        # FastAPI hands a JSON route the raw bytes when the Content-Type is not JSON.
        content_type = request.headers.get("content-type") or "none"
        message = f"the body must be application/json, not Content-Type {content_type}"
        return JSONResponse(
            _validation_body(UnsupportedMediaType.code, message, "header.content-type"),
            status_code=UnsupportedMediaType.status_code,
        )
    if first.get("type") == "json_invalid":  # loc is ("body", <character offset>)
        loc = tuple(first.get("loc", ()))
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        ctx = first.get("ctx")
        reason = ctx.get("error", "JSON decode error") if isinstance(ctx, dict) else "malformed"
        message = f"body: invalid JSON{at}: {reason}"
        return JSONResponse(_validation_body("validation_error", message, "body"), 422)
    field = _loc_to_field(first.get("loc", ())) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error(s))"
    return JSONResponse(_validation_body("validation_error", message, field), status_code=422)


HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def allowed_methods(request: Request) -> list[str] | None:
    """The methods the OpenAPI document lists for the request's path (None: a path it does not
    list). Starlette's own ``Allow`` names only the first route whose path matched, and
    ``GET /v1/models`` and ``POST /v1/models`` are two routes."""
    fits: list[tuple[int, dict[str, Any]]] = []
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"\{[^}/]+\}", template)
        if re.fullmatch("[^/]+".join(re.escape(part) for part in parts), request.url.path):
            fits.append((len(parts), operations))
    if not fits:
        return None
    # "/v1/score-sets/compare" also fits "/v1/score-sets/{score_set_id}": the literal one is
    # the resource the document describes.
    fewest = min(n for n, _ in fits)
    return sorted({m.upper() for n, ops in fits if n == fewest for m in ops if m in HTTP_METHODS})


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # Only the framework raises a bare 400 (Sift raises SiftErrors): a body it cannot
        # decode at all (not UTF-8 JSON, a broken multipart form, too many form parts).
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        message = f"body: the request body could not be parsed: {exc.detail}{cause}"
        return JSONResponse(_validation_body("validation_error", message, "body"), 422)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        methods = allowed_methods(request)
        if methods is not None:
            headers["Allow"] = ", ".join(methods)
    code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "field": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def is_transient_database_error(exc: Exception) -> bool:
    """Whether a retry may succeed: a timed-out pool, a connection lost or refused, SQLite's
    write lock held past the busy timeout. SQLite reports its own mistakes (``no such
    column``: a database not migrated) as operational errors too; those are not transient."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if type(exc.orig).__module__ == "sqlite3":
        message = str(exc.orig).lower()
        return "locked" in message or "busy" in message
    return True


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The database refused or timed out (SQLite's write lock held past the busy timeout, a
    Postgres restart, a pool exhausted): 503 with ``Retry-After``, never a bare 500."""
    if not is_transient_database_error(exc):
        raise exc  # our bug, not the database's weather: a 500, logged with its traceback
    log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    error = ServiceUnavailable("the database is busy or unreachable; retry shortly")
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SiftError, _sift_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(OperationalError, _database_error_handler)
    app.add_exception_handler(PoolTimeout, _database_error_handler)
