"""JSON over HTTP with bounded timeouts and retries: the HTTP judge and the assist endpoint.

A remote service that blips (connection refused, timeout, 5xx) is retried with capped
exponential backoff; a 4xx is the caller's mistake and fails at once. Messages name the URL
without credentials or query string (those may hold tokens) and never quote what the server
sent: the URL is the client's, and a job's error text must not become a way to read an
internal service's answers (``workers.outbound`` keeps such services out of reach as well).
The client must come from ``workers.outbound.guarded_client``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from workers.engine.errors import EngineError, InvalidInput
from workers.outbound import OutboundRefused

log = logging.getLogger(__name__)

BACKOFF_S = 0.2
BACKOFF_CAP_S = 5.0
PARALLEL_REQUESTS = 4
MAX_REPLY_BYTES = 16 * 1024 * 1024
"""A judge's or endpoint's answer larger than this fails the call (16 MiB: 64 long choices)."""

T = TypeVar("T")
R = TypeVar("R")


def redacted(url: str) -> str:
    """The URL without credentials or query string, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


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
            with client.stream("POST", url, json=payload) as reply:
                status = reply.status_code
                body = _read_capped(reply, what) if 200 <= status < 300 else b""
        except OutboundRefused as exc:  # the URL is the client's: its mistake, never retried
            raise InvalidInput(f"{what} refused: {exc}") from exc
        except httpx.ProtocolError as exc:  # its message may quote the server's bytes
            problem = f"{type(exc).__name__} (the reply is not valid HTTP)"
            continue
        except httpx.TransportError as exc:  # connect/read errors and timeouts: retry
            problem = f"{type(exc).__name__}: {exc}"
            continue
        except httpx.HTTPError as exc:
            raise EngineError(f"{what} failed: {type(exc).__name__}") from exc
        if not 200 <= status < 300:
            log.info("%s answered status %d (body not read)", what, status)
        if status >= 500:
            problem = f"status {status}"
            continue
        if 300 <= status < 400:
            raise EngineError(f"{what} answered status {status}: redirects are not followed")
        if not 200 <= status < 300:
            raise EngineError(f"{what} answered status {status}")
        return body.decode(reply.encoding or "utf-8", errors="replace")
    raise EngineError(f"{what} failed after {retries + 1} attempt(s): {problem}")


def _read_capped(reply: httpx.Response, what: str) -> bytes:
    """The reply's body, refused past ``MAX_REPLY_BYTES`` (a hostile server's endless or huge
    answer must not exhaust the worker's memory)."""
    chunks, size = [], 0
    for chunk in reply.iter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise EngineError(f"{what} sent a reply over {MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
