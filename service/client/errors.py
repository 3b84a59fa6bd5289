"""What the client raises. Every exception is a :class:`SiftError`, so a script can catch one
class; an API refusal is an :class:`ApiError` carrying the API's ``{code, message, field}``."""

from __future__ import annotations

from typing import Any


class SiftError(Exception):
    """Anything the client raises on purpose."""


class ApiError(SiftError):
    """The API answered with an error status. ``code``, ``message`` and ``field`` are the
    API's ``{"error": {...}}``; when the body was not that shape (a proxy's HTML page, say),
    ``code`` is ``"http_<status>"`` and ``message`` quotes the start of the body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        method: str = "",
        url: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.method = method
        self.url = url
        self.request_id = request_id
        self.retry_after = retry_after
        where = f" (field {field})" if field else ""
        super().__init__(f"{method} {url} → {status_code} {code}: {message}{where}".strip())

    def to_dict(self) -> dict[str, Any]:
        """The API's error object plus the status: what ``sift --json`` prints."""
        return {
            "status": self.status_code,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }


class AuthenticationError(ApiError):
    """401: the API key is missing, malformed, unknown or revoked."""


class PermissionDeniedError(ApiError):
    """403: the key's role may not do this (read_only keys only read)."""


class NotFoundError(ApiError):
    """404: no such resource in the key's tenant."""


class ConflictError(ApiError):
    """409: the resource's state forbids it (not finished yet, still in use...)."""


class PayloadTooLargeError(ApiError):
    """413: an upload over the server's limit."""


class InvalidInputError(ApiError):
    """422 (or 415): the request was refused; ``field`` names what to fix."""


class RateLimitedError(ApiError):
    """429, after the client's retries ran out."""


class UnavailableError(ApiError):
    """503 (busy database, overloaded API, broker down), after the client's retries ran out."""


class ServerError(ApiError):
    """Any other 5xx: a bug or an outage on the server side."""


STATUS_ERRORS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: InvalidInputError,
    422: InvalidInputError,
    429: RateLimitedError,
    503: UnavailableError,
}


def error_class(status_code: int) -> type[ApiError]:
    if status_code in STATUS_ERRORS:
        return STATUS_ERRORS[status_code]
    return ServerError if status_code >= 500 else ApiError


class TransportError(SiftError):
    """The API could not be reached (refused, reset, timed out), after the client's retries."""


class ProtocolError(SiftError):
    """The server answered, but not as the API documents: a body that is not JSON, JSON of the
    wrong shape, an unexpected status. Usually the URL points at something that is not Sift,
    or the client and server versions differ."""


class JobFailedError(SiftError):
    """A job waited on ended ``failed`` or ``cancelled``; ``resource`` is its last state."""

    def __init__(self, kind: str, resource: Any) -> None:
        self.kind = kind
        self.resource = resource
        self.status = getattr(resource, "status", None)
        self.error = getattr(resource, "error", None)
        detail = f": {self.error}" if self.error else ""
        super().__init__(f"{kind} {getattr(resource, 'id', '?')} {self.status}{detail}")


class WaitTimeoutError(SiftError, TimeoutError):
    """``wait`` gave up before the job finished; the job goes on. ``resource`` is its last
    state."""

    def __init__(self, kind: str, resource: Any, timeout: float) -> None:
        self.kind = kind
        self.resource = resource
        self.timeout = timeout
        stage = getattr(resource, "stage", None) or getattr(resource, "status", "?")
        super().__init__(
            f"{kind} {getattr(resource, 'id', '?')} not finished after {timeout:g}s "
            f"(status {getattr(resource, 'status', '?')}, stage {stage}); it keeps running"
        )
