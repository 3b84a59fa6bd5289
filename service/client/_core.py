"""What the blocking and the asyncio client share: retry policy, URL building, response
checking, streamed multipart bodies, job references and progress with an ETA. No I/O here
except reading upload files."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pydantic

from service.client import models
from service.client.errors import ApiError, ProtocolError, SiftError, error_class

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "SIFT_URL"
KEY_ENV = "SIFT_API_KEY"
KEY_FILE_ENV = "SIFT_API_KEY_FILE"
DEFAULT_KEY_FILE = ".sift/api-key"
"""Where the embedded default (``sift serve`` with no environment) writes its first admin key."""
USER_AGENT = "sift-client/0.1"
CHUNK_BYTES = 256 * 1024
MAX_ERROR_BODY = 64 * 1024

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors raised before the request left: safe to retry whatever the method."""

M = TypeVar("M", bound=pydantic.BaseModel)

asleep = asyncio.sleep
sleep = time.sleep


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, for 429 and 503 answers and transport errors.

    A 429/503 is retried for any method: the API answers them when it could not act (a request
    queued too long, a busy database whose transaction rolled back). One exception: a job the
    broker refused to queue is kept, marked failed, and its 503 retried makes a new one (the
    failed one stays listed, with the broker's error). A transport error
    is retried for idempotent methods, and for POST only when the request never left
    (connection refused or not established), so a lost reply never creates a resource twice.
    ``Retry-After`` is honoured as given; one longer than ``max_retry_after`` is not waited
    for: the error is raised with its ``retry_after``.
    """

    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int) -> float:
        """``base * 2**attempt`` capped, with up to 25% random jitter so clients spread out."""
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        return delay * (0.75 + 0.25 * secrets.randbelow(1000) / 1000)

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before retry ``attempt`` (0-based), or None to give up now."""
        if attempt >= self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        return self.backoff(attempt)


NO_RETRIES = RetryPolicy(max_retries=0)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or
    unreadable (then the backoff applies)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def may_retry_transport(method: str, error: httpx.TransportError) -> bool:
    return method in IDEMPOTENT_METHODS or isinstance(error, NOT_SENT_ERRORS)


def resolve_base_url(base_url: str | None) -> str:
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the API URL must start with http:// or https://, got {url!r}")
    return url


def key_file() -> Path:
    """The embedded default's key file: ``SIFT_API_KEY_FILE``, else ``.sift/api-key``."""
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE)


def api_key_from_env(api_key: str | None = None) -> str | None:
    """``api_key``, else ``SIFT_API_KEY``, else the key the embedded default wrote
    (:func:`key_file`, read when it exists); None when there is none. The clients themselves
    read only ``SIFT_API_KEY``: command lines and scripts call this for the file fallback."""
    key = api_key or os.environ.get(KEY_ENV)
    if key:
        return key
    path = key_file()
    if path.is_file():
        return path.read_text().strip() or None
    return None


def resolve_api_key(api_key: str | None) -> str | None:
    key = api_key or os.environ.get(KEY_ENV) or None
    if key is not None and (not key.isascii() or any(c in key for c in "\r\n ")):
        raise ValueError("the API key must be printable ASCII without spaces")
    return key


def ident(value: Any, what: str = "id") -> str:
    """An id from a string or anything with an ``id`` (a read model), checked non-empty: an
    empty one would address the collection instead of a member."""
    raw = getattr(value, "id", value)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{what} must be a non-empty string or a resource with an id")
    return raw


def path(template: str, *ids: Any) -> str:
    """``template`` with each ``{}`` replaced by an id, percent-encoded (a ``/`` or ``..`` in
    an id stays inside its path segment)."""
    parts = [quote(ident(i), safe="") for i in ids]
    return template.format(*parts)


def jsonable(value: Any) -> Any:
    """Request models as the JSON they stand for (only the fields that were set, so the
    server's defaults apply), anything else as it is."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def body(given: pydantic.BaseModel | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> Any:
    """A JSON body from a request model or mapping, with keyword fields on top (None-valued
    keywords are left out: they mean "not given")."""
    out = jsonable(given) if given is not None else {}
    if not isinstance(out, dict):
        raise TypeError(f"a request body must be a model or a mapping, not {type(given)}")
    out.update({k: jsonable(v) for k, v in fields.items() if v is not None})
    return out


def params(**values: Any) -> dict[str, Any]:
    """Query parameters without the ones not given; booleans as the API spells them."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return out


# --- responses --------------------------------------------------------------------------------


def _describe(request: httpx.Request) -> tuple[str, str]:
    return request.method, str(request.url.copy_with(query=None))


def api_error(response: httpx.Response, content: bytes) -> ApiError:
    """The API's error, or a clear stand-in when the body is not the API's error shape."""
    method, url = _describe(response.request)
    status = response.status_code
    code, message, field_name = f"http_{status}", "", None
    try:
        error = json.loads(content)["error"]
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise TypeError
        code = str(error.get("code") or code)
        message = error["message"]
        field_name = error.get("field") if isinstance(error.get("field"), str) else None
    except (ValueError, KeyError, TypeError, IndexError):
        text = content[:500].decode("utf-8", "replace").strip()
        message = f"{response.reason_phrase or 'error'} (not a Sift error body: {text!r})"
    return error_class(status)(
        status,
        code,
        message,
        field_name,
        method=method,
        url=url,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


def check_status(response: httpx.Response) -> None:
    """Raise a ProtocolError on a status the API never answers with success (1xx, 3xx)."""
    if 200 <= response.status_code < 300 or response.status_code >= 400:
        return
    method, url = _describe(response.request)
    where = response.headers.get("location")
    to = f" to {where}" if where else ""
    raise ProtocolError(
        f"{method} {url}: unexpected {response.status_code}{to}; is the URL the Sift API "
        "(check SIFT_URL, http vs https)?"
    )


def decode_json(response: httpx.Response) -> Any:
    method, url = _describe(response.request)
    try:
        return json.loads(response.content)
    except ValueError as e:
        start = response.content[:200].decode("utf-8", "replace")
        raise ProtocolError(
            f"{method} {url}: {response.status_code} response is not JSON ({e}): {start!r}"
        ) from None


def validate(response: httpx.Response, into: Any) -> Any:
    """The response's JSON as ``into`` (a model class or a type such as ``list[Model]``)."""
    data = decode_json(response)
    try:
        return _adapter(into).validate_python(data)
    except pydantic.ValidationError as e:
        method, url = _describe(response.request)
        name = getattr(into, "__name__", str(into))
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:5]
        )
        more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
        raise ProtocolError(
            f"{method} {url}: the response does not match {name}: {problems}{more}"
        ) from None


@functools.lru_cache(maxsize=512)
def _adapter(into: Any) -> pydantic.TypeAdapter[Any]:
    """One validator per reply type, built on first use (building one per reply is slow)."""
    return pydantic.TypeAdapter(into)


def json_line(response: httpx.Response, line: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as e:
        method, url = _describe(response.request)
        raise ProtocolError(f"{method} {url}: line {number} is not JSON ({e})") from None
    if not isinstance(value, dict):
        method, url = _describe(response.request)
        raise ProtocolError(f"{method} {url}: line {number} is not a JSON object")
    return value


def next_offset(response: httpx.Response, page: Any, offset: int) -> int | None:
    """The offset of the page after ``page`` (asked for at ``offset``), or None at the end."""
    if page.offset != offset:
        method, url = _describe(response.request)
        raise ProtocolError(f"{method} {url}: asked for offset {offset}, got {page.offset}")
    if not page.items:
        return None
    following = offset + len(page.items)
    return following if following < page.total else None


# --- multipart uploads, streamed from files ---------------------------------------------------


@dataclass(frozen=True)
class FilePart:
    """A file form field read from ``path`` a chunk at a time while it is sent."""

    name: str
    path: Path
    content_type: str = "application/octet-stream"
    filename: str | None = None


def _quoted(value: str) -> str:
    """A form name or file name inside ``"..."`` (RFC 7578: percent-encode the quote and line
    breaks, as browsers do)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


@dataclass
class Multipart:
    """A multipart/form-data body of text fields and files, produced piece by piece with an
    exact Content-Length (so the server sees a plain, unchunked body) and re-readable: each
    retry reads the files again from the start."""

    fields: Sequence[tuple[str, str] | FilePart]
    boundary: str = field(default_factory=lambda: "sift-" + secrets.token_hex(16))

    def __post_init__(self) -> None:
        self._pieces: list[bytes | tuple[Path, int]] = []
        for item in self.fields:
            if isinstance(item, FilePart):
                size = _file_size(item.path)
                filename = item.filename or item.path.name
                head = (
                    f"--{self.boundary}\r\nContent-Disposition: form-data; "
                    f'name="{_quoted(item.name)}"; filename="{_quoted(filename)}"\r\n'
                    f"Content-Type: {item.content_type}\r\n\r\n"
                )
                self._pieces += [head.encode(), (item.path, size), b"\r\n"]
            else:
                name, value = item
                head = (
                    f"--{self.boundary}\r\nContent-Disposition: form-data; "
                    f'name="{_quoted(name)}"\r\n\r\n'
                )
                self._pieces.append(head.encode() + value.encode() + b"\r\n")
        self._pieces.append(f"--{self.boundary}--\r\n".encode())

    @property
    def length(self) -> int:
        return sum(p if isinstance(p, int) else len(p) for p in self._sizes())

    def _sizes(self) -> Iterator[int | bytes]:
        for piece in self._pieces:
            yield piece[1] if isinstance(piece, tuple) else piece

    @property
    def headers(self) -> dict[str, str]:
        return {
            "content-type": f"multipart/form-data; boundary={self.boundary}",
            "content-length": str(self.length),
        }


def _file_size(file: Path) -> int:
    try:
        stat = file.stat()
    except OSError as e:
        raise SiftError(f"cannot read {file}: {e.strerror or e}") from None
    if not file.is_file():
        raise SiftError(f"{file} is not a file")
    return stat.st_size


def file_chunks(file: Path, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``file``, a chunk at a time (a file that changed size since
    the body's length was computed would make the request lie about its length)."""
    left = size
    with file.open("rb") as f:
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise SiftError(f"{file} shrank while it was being uploaded")
            left -= len(chunk)
            yield chunk
        if f.read(1):
            raise SiftError(f"{file} grew while it was being uploaded")


def multipart_chunks(body: Multipart) -> Iterator[bytes]:
    for piece in body._pieces:
        if isinstance(piece, tuple):
            yield from file_chunks(*piece)
        else:
            yield piece


async def amultipart_chunks(body: Multipart) -> AsyncIterator[bytes]:
    """As :func:`multipart_chunks`; file reads are short and local, so they run inline."""
    for chunk in multipart_chunks(body):
        yield chunk


# --- jobs and progress ------------------------------------------------------------------------

JOB_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "valuation": models.ValuationRead,
    "score_set": models.ScoreSetRead,
    "curation": models.CurationRead,
    "study": models.StudyRead,
    "evaluation": models.EvaluationRead,
}
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def job_ref(job: Any, kind: str | None) -> tuple[str, str]:
    """``(kind, id)`` of a job-backed resource: a read model of one (its type tells the kind)
    or an id with ``kind``."""
    if kind is None:
        for name, model in JOB_MODELS.items():
            if isinstance(job, model):
                kind = name
                break
        else:
            raise ValueError(
                "wait() needs a valuation, score set, curation, study or evaluation (as returned "
                f"by the client), or an id with kind= one of {sorted(JOB_MODELS)}"
            )
    if kind not in JOB_MODELS:
        raise ValueError(f"kind must be one of {sorted(JOB_MODELS)}, got {kind!r}")
    return kind, ident(job)


@dataclass(frozen=True)
class Progress:
    """One look at a job, as ``wait(progress=...)`` reports it after every poll."""

    kind: str
    id: str
    status: str
    stage: str | None
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    """Seconds left in the current stage, from its rate so far (None until it has one)."""
    resource: Any

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def describe(self) -> str:
        """One line for logs: ``valuation 3f2a.. running featurize 12/40 ETA 31s``."""
        stage = f" {self.stage}" if self.stage else ""
        counts = f" {self.done}/{self.total}" if self.total else ""
        eta = f" ETA {format_seconds(self.eta_s)}" if self.eta_s is not None else ""
        return f"{self.kind} {self.id} {self.status}{stage}{counts}{eta}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressTracker:
    """ETA from the rate within the current stage: stages differ in speed (a warmup epoch is
    not a featurized shard), so the clock restarts when the stage or its total changes."""

    def __init__(self, kind: str, job_id: str, clock: Callable[[], float] = time.monotonic):
        self.kind, self.id, self.clock = kind, job_id, clock
        self.started = clock()
        self._stage: tuple[str | None, int] | None = None
        self._since = (self.started, 0)

    def update(self, resource: Any) -> Progress:
        now = self.clock()
        done, total = resource.progress.done, resource.progress.total
        key = (resource.stage, total)
        if key != self._stage or done < self._since[1]:
            self._stage, self._since = key, (now, done)
        eta: float | None = None
        if resource.status in FINISHED or (total and done >= total):
            eta = 0.0
        elif total and done > self._since[1] and now > self._since[0]:
            rate = (done - self._since[1]) / (now - self._since[0])
            eta = (total - done) / rate
        return Progress(
            kind=self.kind,
            id=self.id,
            status=resource.status,
            stage=resource.stage,
            done=done,
            total=total,
            elapsed_s=now - self.started,
            eta_s=eta,
            resource=resource,
        )


def job_deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0 seconds (or None to wait without limit)")
    return None if timeout is None else time.monotonic() + timeout
