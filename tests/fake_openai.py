"""A loopback stand-in for an OpenAI-compatible ``/v1/chat/completions`` server (tests only).

``answer(messages, i)`` writes the i-th choice; the server records every request body and
header, can ignore ``n`` (one choice per request, as some servers do), fail the first requests
with a 503, and demand a bearer token.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[list[dict[str, str]], int], str]


@dataclass
class FakeOpenAI:
    answer: Answer
    ignore_n: bool = False
    failures: int = 0
    api_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})
            if self.failures > 0:
                self.failures -= 1
                return 503, {"error": "overloaded"}
        if path != "/v1/chat/completions":
            return 404, {"error": f"no route {path}"}
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "bad key"}
        n = 1 if self.ignore_n else int(body.get("n", 1))
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": self.answer(body["messages"], i)},
            }
            for i in range(n)
        ]
        return 200, {"object": "chat.completion", "model": body["model"], "choices": choices}


@contextmanager
def serve(fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
