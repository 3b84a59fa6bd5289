"""Request bodies read as they arrive: the size limit enforced while streaming, and multipart
parts handed on piece by piece.

Why: an upload of hundreds of megabytes must never sit in the API's memory. Starlette's
``request.form()`` spools each file and ``await upload.read()`` joins it again; here the body
flows from the socket through :class:`MultipartStream` (``python-multipart``'s streaming
parser) into a :class:`PartHandler` that parses or spools each part as its bytes come, so the
API holds one chunk (:data:`CHUNK_BYTES`) of the body at a time, whatever its size.

Usage in an async endpoint (the handler's work, parsing and database writes, runs in a worker
thread, never on the event loop)::

    stream = MultipartStream(request.headers.get("content-type", ""), handler)
    async for chunk in body_chunks(request, limit):
        await run_in_threadpool(stream.write, chunk)
    stream.close()
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import InvalidInput, PayloadTooLarge

CHUNK_BYTES = 1 << 20
"""How much of the body is gathered before it is handed to the parser (one thread hop each)."""

MAX_TEXT_BYTES = 4096
"""A text (non-file) part longer than this is refused: they hold names and numbers."""


async def body_chunks(
    request: Request, limit: int, chunk_bytes: int | None = None
) -> AsyncIterator[bytes]:
    """The body in pieces of about ``chunk_bytes``; 413 as soon as it passes ``limit`` bytes,
    declared (``Content-Length``) or counted while streaming (chunked bodies)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    size = 0
    pending = bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        pending += chunk
        if len(pending) >= chunk_bytes:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body in memory, for the small bodies that may be (JSON, up to ``limit``)."""
    return b"".join([chunk async for chunk in body_chunks(request, limit)])


def part_text(name: str, data: bytes, *, strip: bool = True) -> str:
    """A text part's value: UTF-8 without NUL (no database stores NUL in text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"form field {name!r} is not UTF-8: {e}", field=name) from None
    if "\x00" in text:
        raise InvalidInput(f"form field {name!r} contains a NUL character", field=name)
    return text.strip() if strip else text


class PartHandler(Protocol):
    """What a form does with its parts, in the order they arrive."""

    def start(self, name: str, filename: str | None) -> None:
        """A part begins; ``filename`` is None for a text field. Raise to refuse it."""
        ...

    def data(self, chunk: bytes) -> None:
        """More of the current part's bytes."""
        ...

    def end(self) -> None:
        """The current part is complete."""
        ...


class MultipartStream:
    """Feeds a multipart/form-data body to a :class:`PartHandler` as it arrives.

    Malformed multipart, a part without a name, more than ``max_parts`` parts or a body that
    ends before its closing boundary are 422s on ``body``, so a truncated upload is never
    taken for a complete one.
    """

    def __init__(self, content_type: str, handler: PartHandler, max_parts: int = 10) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart/form-data needs a boundary parameter", field="body")
        self.handler = handler
        self.max_parts = max_parts
        self.parts = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self.handler.end,
                "on_end": self._on_end,
            },
        )

    def write(self, data: bytes) -> None:
        if self.ended:  # anything after the closing boundary is the epilogue: ignored
            return
        try:
            self._parser.write(data)
        except MultipartParseError as e:
            raise InvalidInput(
                f"body is not valid multipart/form-data: {e}", field="body"
            ) from None

    def close(self) -> None:
        """The body is complete: refuse it if the closing boundary never came."""
        if not self.ended:
            raise InvalidInput(
                "body ends before the multipart closing boundary (truncated upload?)",
                field="body",
            )

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidInput(
                'every form part needs Content-Disposition: form-data; name="..."', field="body"
            )
        name = _header_text(options[b"name"])
        filename = _header_text(options[b"filename"]) if b"filename" in options else None
        self.handler.start(name, filename)  # refuses unknown and repeated parts by name
        self.parts += 1
        if self.parts > self.max_parts:
            raise InvalidInput(f"at most {self.max_parts} form parts are accepted", field="body")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.handler.data(data[start:end])

    def _on_end(self) -> None:
        self.ended = True


def _header_text(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("a form part's name or filename is not UTF-8", field="body") from None
    return text.replace("\x00", "")
