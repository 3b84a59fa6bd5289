"""Python client of the Sift API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

It imports only the standard library, httpx and pydantic (no server code), so it installs
anywhere the API is reachable. Request and response types are in :mod:`service.client.models`,
generated from the API's OpenAPI document; errors in :mod:`service.client.errors`.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="sift_...") as sift:
        pool = sift.datasets.upload("pool.jsonl")
        ...
        valuation = sift.wait(sift.valuations.create(...), progress=print, timeout=3600)

``Client()`` reads ``SIFT_URL`` and ``SIFT_API_KEY``; ``Client(api_key=api_key_from_env())``
also finds the key the embedded default wrote to ``.sift/api-key`` (or ``SIFT_API_KEY_FILE``).
"""

from service.client import errors, models
from service.client._async import AsyncClient
from service.client._core import DEFAULT_URL, FilePart, Progress, RetryPolicy, api_key_from_env
from service.client._sync import Client
from service.client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    SiftError,
    TransportError,
    UnavailableError,
    WaitTimeoutError,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "FilePart",
    "InvalidInputError",
    "JobFailedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Progress",
    "ProtocolError",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "SiftError",
    "TransportError",
    "UnavailableError",
    "WaitTimeoutError",
    "api_key_from_env",
    "errors",
    "models",
]
