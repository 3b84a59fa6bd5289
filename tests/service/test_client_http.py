"""``service.client`` against a scripted HTTP server on 127.0.0.1 (a real socket, no mock
library): retries with backoff and ``Retry-After`` on 429/503 and transport errors, bounded;
hostile or broken responses as clear exceptions; uploads streamed from disk."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service.client import (
    ApiError,
    Client,
    InvalidInputError,
    ProtocolError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TransportError,
    UnavailableError,
    models,
)
from tests.integration.servers import free_port

FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=0.05)
ME = {"tenant_id": "t1", "tenant_name": "team", "key_id": "k1", "role": "admin"}
DATASET = {
    "id": "d1",
    "name": "big",
    "n_records": 1,
    "n_duplicates": 0,
    "n_prompt_only": 0,
    "duplicates": [],
    "subtasks": {},
    "content_hash": "0" * 64,
    "created_at": "2026-01-01T00:00:00Z",
}
UNAVAILABLE = {"error": {"code": "unavailable", "message": "the database is busy", "field": None}}


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    """Close the connection without answering (the client sees a transport error)."""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    body_head: bytes
    body_tail: bytes


class Scripted:
    """Answers requests from ``replies`` in order (the last one repeats) and records them."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                head, tail, left = b"", b"", size
                while left > 0:  # read and drop the body a chunk at a time
                    chunk = self.rfile.read(min(65536, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    head = head or chunk[:4096]
                    tail = (tail + chunk)[-4096:]
                headers = {k.lower(): v for k, v in self.headers.items()}
                with scripted.lock:
                    scripted.seen.append(
                        Seen(self.command, self.path, headers, size - left, head, tail)
                    )
                    reply = (
                        scripted.replies.pop(0)
                        if len(scripted.replies) > 1
                        else scripted.replies[0]
                    )
                if reply.drop:
                    self.close_connection = True
                    return
                body = reply.body
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(reply.status)
                content_type = "application/json" if not isinstance(body, bytes) else "text/plain"
                headers = {"content-type": content_type, **reply.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen.clear()


@pytest.fixture()
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    thread = threading.Thread(target=scripted.server.serve_forever, daemon=True)
    thread.start()
    yield scripted
    scripted.server.shutdown()
    scripted.server.server_close()


def _client(server: Scripted, retry: RetryPolicy = FAST) -> Client:
    return Client(server.url, "sift_test-key", retry=retry, timeout=10)


# --- retries ----------------------------------------------------------------------------------


def test_429_and_503_are_retried_until_the_answer(server: Scripted) -> None:
    server.script(
        Reply(
            429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"retry-after": "0"}
        ),
        Reply(503, UNAVAILABLE),
        Reply(200, ME),
    )
    with _client(server) as sift:
        me = sift.me()
    assert isinstance(me, models.Me) and me.tenant_name == "team"
    assert [s.path for s in server.seen] == ["/v1/me"] * 3
    assert all(s.headers["authorization"] == "Bearer sift_test-key" for s in server.seen)


def test_retry_after_is_honoured(server: Scripted) -> None:
    server.script(Reply(503, UNAVAILABLE, {"retry-after": "1"}), Reply(200, ME))
    started = time.monotonic()
    with _client(server) as sift:
        sift.me()
    assert time.monotonic() - started >= 0.95
    assert len(server.seen) == 2


def test_retries_are_bounded(server: Scripted) -> None:
    server.script(Reply(503, UNAVAILABLE, {"retry-after": "0"}))
    with _client(server, RetryPolicy(max_retries=2, backoff_base=0.01)) as sift:
        with pytest.raises(UnavailableError) as busy:
            sift.me()
    assert len(server.seen) == 3  # the request and two retries
    assert (busy.value.status_code, busy.value.code) == (503, "unavailable")
    assert busy.value.message == "the database is busy"

    # A Retry-After beyond the policy's limit is not slept through: the caller decides.
    server.script(
        Reply(429, {"error": {"code": "rate_limited", "message": "later"}}, {"retry-after": "3600"})
    )
    with _client(server) as sift:
        with pytest.raises(RateLimitedError) as later:
            sift.me()
    assert len(server.seen) == 1 and later.value.retry_after == 3600


def test_transport_errors_are_retried_where_that_is_safe(server: Scripted) -> None:
    server.script(Reply(drop=True), Reply(drop=True), Reply(200, ME))
    with _client(server) as sift:
        assert sift.me().role == "admin"  # a GET: retried
    assert len(server.seen) == 3

    # A POST whose reply was lost may have created the resource: not sent again.
    server.script(Reply(drop=True))
    with _client(server) as sift:
        with pytest.raises(TransportError) as lost:
            sift.models.create("tiny", "builtin:tiny-llama")
    assert len(server.seen) == 1 and "POST" in str(lost.value)


def test_a_refused_connection_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sift = Client(url, "k", retry=RetryPolicy(max_retries=2, backoff_base=0.01))
    with pytest.raises(TransportError) as refused:
        sift.models.create("tiny", "builtin:tiny-llama")  # never sent: safe to retry a POST
    assert "after 3 attempts" in str(refused.value) and "ConnectError" in str(refused.value)


# --- hostile or broken servers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error", "says"),
    [
        (Reply(200, b"<html>hello</html>"), ProtocolError, "not JSON"),
        (Reply(200, {"tenant_id": 3}), ProtocolError, "does not match Me"),
        (Reply(200, [1, 2]), ProtocolError, "does not match Me"),
        (Reply(302, b"", {"location": "https://elsewhere/"}), ProtocolError, "unexpected 302"),
        (Reply(502, b"<html>Bad Gateway</html>"), ServerError, "Bad Gateway"),
        (Reply(400, {"error": "boom"}), ApiError, "not a Sift error body"),
        (
            Reply(422, {"error": {"code": "invalid_input", "message": "m", "field": 7}}),
            InvalidInputError,
            "m",
        ),
    ],
)
def test_bad_responses_are_clear_errors(
    server: Scripted, reply: Reply, error: type[Exception], says: str
) -> None:
    server.script(reply)
    with _client(server) as sift:
        with pytest.raises(error) as raised:
            sift.me()
    assert says in str(raised.value)
    assert "GET http://127.0.0.1" in str(raised.value) or error is ProtocolError


def test_an_endless_error_body_is_cut(server: Scripted) -> None:
    server.script(Reply(500, b"x" * (8 << 20)))
    with _client(server) as sift:
        with pytest.raises(ServerError) as raised:
            sift.me()
    assert raised.value.code == "http_500" and len(str(raised.value)) < 1000


def test_a_lying_page_or_export_stops_with_a_protocol_error(server: Scripted) -> None:
    model = {
        "id": "m1",
        "name": "tiny",
        "source": "builtin:tiny-llama",
        "created_at": "2026-01-01T00:00:00Z",
    }
    server.script(Reply(200, {"items": [model], "total": 5, "limit": 1, "offset": 9}))
    with _client(server) as sift:
        with pytest.raises(ProtocolError, match="asked for offset 0, got 9"):
            list(sift.models.iter(page_size=1))

    server.script(Reply(200, b'{"id": "r1"}\nnot json\n'))
    with _client(server) as sift:
        with pytest.raises(ProtocolError, match="line 2 is not JSON"):
            list(sift.selections.export("s1"))


# --- uploads ----------------------------------------------------------------------------------


def test_an_upload_streams_from_disk_with_its_length_and_again_on_retry(
    server: Scripted, tmp_path: Path
) -> None:
    big = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "p" * 200, "response": "r" * 200}).encode() + b"\n"
    with big.open("wb") as f:
        for _ in range(48 << 20 // len(line)):  # about 48 MB
            f.write(line)
    size = big.stat().st_size
    server.script(Reply(503, UNAVAILABLE, {"retry-after": "0"}), Reply(201, DATASET))

    tracemalloc.start()
    try:
        with _client(server) as sift:
            dataset = sift.datasets.upload(big, name="big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dataset.id == "d1"
    assert peak < 8 << 20, f"the upload held {peak / 2**20:.0f} MiB in memory"

    assert len(server.seen) == 2  # the 503 made it send the whole body again
    for seen in server.seen:
        assert "transfer-encoding" not in seen.headers
        assert seen.body_bytes == int(seen.headers["content-length"]) > size
        boundary = seen.headers["content-type"].split("boundary=")[1]
        assert seen.body_head.startswith(f"--{boundary}\r\n".encode())
        assert b'name="name"\r\n\r\nbig\r\n' in seen.body_head
        assert b'name="file"; filename="big.jsonl"' in seen.body_head
        assert seen.body_tail.endswith(line + f"\r\n--{boundary}--\r\n".encode())


def test_retry_after_forms_and_the_backoff_bounds() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from service.client._core import retry_after_seconds

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 0.5 ") == 0.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(past) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds("nan") is None
    assert retry_after_seconds(None) is None and retry_after_seconds("-3") == 0.0

    policy = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=3.0, max_retry_after=10)
    delays = [policy.delay(attempt, None) for attempt in range(4)]
    assert delays[3] is None  # bounded
    assert 0.75 <= delays[0] <= 1.0 and 1.5 <= delays[1] <= 2.0 and 2.25 <= delays[2] <= 3.0
    assert policy.delay(0, 4.0) == 4.0 and policy.delay(0, 11.0) is None


def test_readiness_503_is_an_answer_not_an_error(server: Scripted) -> None:
    failing = {
        "status": "unavailable",
        "checks": {"database": "error: down"},
        "failing": ["database"],
    }
    server.script(Reply(503, failing, {"retry-after": "0"}))
    with _client(server) as sift:
        ready = sift.ready()
    assert ready.failing == ["database"] and len(server.seen) == 1  # not retried
