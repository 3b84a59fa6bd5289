"""JSON over HTTP with bounded timeouts and retries: the HTTP judge and the assist endpoint.

A remote service that blips (connection refused, timeout, 5xx) is retried with capped
exponential backoff; a 4xx is the caller's mistake and fails at once. Messages name the URL
without credentials or query string (those may hold tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from workers.engine.errors import EngineError

BACKOFF_S = 0.2
BACKOFF_CAP_S = 5.0
PARALLEL_REQUESTS = 4

T = TypeVar("T")
R = TypeVar("R")


def redacted(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def post_json(
    client: httpx.Client, url: str, payload: dict[str, Any], *, retries: int, what: str
) -> str:
    """POST ``payload``; the 2xx body's text. ``what`` names the request in errors
    (e.g. "http judge http://host/judge for probe 'q1'")."""
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_CAP_S))
        try:
            reply = client.post(url, json=payload)
        except httpx.TransportError as exc:  # connect/read errors and timeouts: retry
            problem = f"{type(exc).__name__}: {exc}"
            continue
        except httpx.HTTPError as exc:
            raise EngineError(f"{what} failed: {exc}") from exc
        if reply.status_code >= 500:
            problem = f"status {reply.status_code}: {snippet(reply.text)}"
            continue
        if not 200 <= reply.status_code < 300:
            raise EngineError(f"{what} answered status {reply.status_code}: {snippet(reply.text)}")
        return reply.text
    raise EngineError(f"{what} failed after {retries + 1} attempt(s): {problem}")


def map_parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads, in order; the first error cancels the rest."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
