"""Prometheus metrics and structured logs for the API; the log context the workers share.

Metrics (``prometheus_client``, the process's default registry, served at ``GET /metrics``):

- ``sift_http_requests_total{method, route, status}``: requests answered;
- ``sift_http_request_duration_seconds{method, route}``: a latency histogram;
- ``sift_http_exceptions_total{method, route, exception}``: unhandled exceptions (the 500s);
- ``sift_http_requests_in_progress{method}``.

``route`` is the route's template (``/v1/datasets/{dataset_id}``), never the raw path, so ids
cannot multiply the series; a path that matches no route is ``unmatched``, an unknown method
``other``. ``/metrics`` is outside ``/v1`` (no API key, like ``/healthz``): keep it on the
scraper's network, and set ``SIFT_METRICS_TOKEN`` to require ``Authorization: Bearer <token>``.
Where the worker runs in this process (the embedded default), its metrics are served here too.
Several API processes (``sift serve --workers N``) write their samples to files in
``PROMETHEUS_MULTIPROC_DIR`` and any of them serves the sum (gauges: of live processes);
prometheus_client's ``process_*`` and ``python_*`` metrics are then not served.

Logs: every request runs in a log context holding its ``request_id`` (the client's
``X-Request-ID`` when well-formed, else a new one; echoed in the response), and a worker task in
one holding ``task_id``, ``task_name`` and ``job_id`` (``workers/observability.py``). The
handler that :func:`configure_logging` installs adds those fields to every record; only its
formatter depends on ``SIFT_LOG_FORMAT``: ``plain`` (the default) or ``json`` (one object per
line, python-json-logger). ``sift.access`` logs one line per request, in place of uvicorn's
access log, with the route, status, duration and request id.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, Annotated, Any, Literal

import prometheus_client
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import MULTIPROCESS_DIR_ENV, Settings, get_settings
from service.errors import Unauthorized

# --- log context ------------------------------------------------------------------------------

_log_fields: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "sift_log_fields", default=MappingProxyType({})
)


def open_log_scope(**fields: str) -> contextvars.Token[Mapping[str, str]]:
    """Start a request's or a task's log context; pass the token to :func:`close_log_scope`."""
    return _log_fields.set(dict(fields))


def close_log_scope(token: contextvars.Token[Mapping[str, str]]) -> None:
    _log_fields.reset(token)


def bind_log_fields(**fields: str) -> None:
    """Add fields to the open scope (a task's ``job_id``); they end with it. With no scope
    open (a task body called directly) this does nothing, so nothing leaks into the caller."""
    current = _log_fields.get()
    if current:
        _log_fields.set({**current, **fields})


def log_fields() -> Mapping[str, str]:
    """The current context's fields (e.g. ``{"request_id": ...}``)."""
    return _log_fields.get()


class ContextFilter(logging.Filter):
    """Copies the log context onto each record (as attributes, and as ``log_context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _log_fields.get()
        record.log_context = fields
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message [request_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "log_context", None)
        if not fields:
            return line
        suffix = " ".join(f"{name}={value}" for name, value in fields.items())
        head, sep, tail = line.partition("\n")  # a traceback stays below the first line
        return f"{head} [{suffix}]{sep}{tail}"


def json_formatter() -> logging.Formatter:
    """``{"time", "level", "logger", "message", ...context and extra fields}`` per line."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        reserved_attrs=[*RESERVED_ATTRS, "log_context", "color_message"],
    )


HANDLER_NAME = "sift"
LogFormat = Literal["plain", "json"]


def make_handler(
    log_format: LogFormat, *, stream: IO[str] | None = None, logfile: str | None = None
) -> logging.Handler:
    """A handler (stderr, ``stream`` or ``logfile``) with the context filter and the format."""
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(stream or sys.stderr)
    )
    handler.set_name(HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter() if log_format == "json" else PlainFormatter())
    return handler


def configure_logging(
    log_format: LogFormat,
    level: int | str,
    *,
    stream: IO[str] | None = None,
    logfile: str | None = None,
    force: bool = False,
) -> bool:
    """Install Sift's root handler (replacing one installed before) and route uvicorn's loggers
    through it; True if it did.

    Like ``logging.basicConfig`` it leaves a process alone whose root logger has handlers of
    someone else's (pytest, a uvicorn ``--log-config``) unless ``force``.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    if not force and any(h not in ours for h in root.handlers):
        return False
    for old in ours:
        root.removeHandler(old)
        old.close()
    root.addHandler(make_handler(log_format, stream=stream, logfile=logfile))
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # sift.access replaces it
    return True


# --- HTTP metrics -----------------------------------------------------------------------------

prometheus_client.disable_created_metrics()  # no *_created series: they double every counter

HTTP_REQUESTS = Counter(
    "sift_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "sift_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
HTTP_EXCEPTIONS = Counter(
    "sift_http_exceptions",
    "Unhandled exceptions (answered 500), by method, route template and exception type",
    ["method", "route", "exception"],
)
HTTP_IN_PROGRESS = Gauge(
    "sift_http_requests_in_progress",
    "HTTP requests being answered, by method",
    ["method"],
    multiprocess_mode="livesum",
)

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: their access lines are DEBUG, or they would drown the rest."""
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

access_log = logging.getLogger("sift.access")
log = logging.getLogger(__name__)


def request_id_from(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is 1-128 of ``[A-Za-z0-9._:-]``, else a new one (a
    header with spaces, quotes or newlines could forge log fields; it is not used)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The full template of the route that answered (``/v1/datasets/{dataset_id}``).

    FastAPI puts the matched route in ``scope["route"]``, but an included router's route
    holds its path without the prefixes of the routers above it. Those prefixes are static
    text, so they are what precedes the route's own path, with its parameters filled in, in
    the request path. A path that matched no route is ``unmatched``.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    rendered = template
    convertors = getattr(route, "param_convertors", {})
    for name, value in (scope.get("path_params") or {}).items():
        convertor = convertors.get(name)
        text = convertor.to_string(value) if convertor is not None else str(value)
        rendered = rendered.replace("{" + name + "}", text)
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    if rendered and path.endswith(rendered):
        return path[: len(path) - len(rendered)] + template
    return template


class ObservabilityMiddleware:
    """Outermost ASGI layer: request id, log context, metrics and the access line.

    It wraps Starlette's ``ServerErrorMiddleware`` too, so a 500 from an unhandled exception
    is counted with its status and still carries ``X-Request-ID``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        method = scope.get("method", "GET")
        method = method if method in METHODS else "other"
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = open_log_scope(request_id=request_id)
        started = time.perf_counter()
        HTTP_IN_PROGRESS.labels(method).inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            HTTP_EXCEPTIONS.labels(method, route_template(scope), type(exc).__name__).inc()
            # uvicorn logs the traceback too, but outside the request: this one has its id
            log.error("unhandled %s on %s %s", type(exc).__name__, method, scope.get("path"),
                      exc_info=True)  # fmt: skip
            raise
        finally:
            elapsed = time.perf_counter() - started
            HTTP_IN_PROGRESS.labels(method).dec()
            route = route_template(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            # as sent, still percent-encoded: a %0A in it cannot start a forged plain log line
            path = (scope.get("raw_path") or scope.get("path", "").encode()).decode("latin-1")
            access_log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "%s %s %d %.1fms",
                method,
                path,
                status,
                elapsed * 1000,
                extra={
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
            close_log_scope(token)


# --- /metrics and wiring ----------------------------------------------------------------------

router = APIRouter(tags=["observability"])


def _check_token(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    if settings.metrics_token is None:
        return
    expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("GET /metrics needs `Authorization: Bearer <SIFT_METRICS_TOKEN>`")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_check_token)])
def metrics(request: Request) -> Response:
    """Prometheus exposition (a thread: collectors may do I/O): this process's registry, or,
    when the API runs several processes (``sift serve --workers N``), all of theirs."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(_registry()), media_type=content_type)


def _registry() -> CollectorRegistry:
    folder = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not folder:
        return REGISTRY
    _forget_dead_processes(Path(folder))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def _forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of API processes that died without their lifespan's cleanup
    (SIGKILL, a crash; uvicorn's supervisor then starts another), or they would count forever."""
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install_observability(app: FastAPI) -> None:
    """``/metrics``, the request middleware (outermost), and logging set up at start-up."""
    app.include_router(router)
    build: Callable[[], ASGIApp] = app.build_middleware_stack
    app.build_middleware_stack = lambda: ObservabilityMiddleware(build())  # type: ignore[method-assign]
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        settings = app.dependency_overrides.get(get_settings, get_settings)()
        configure_logging(settings.log_format, settings.log_level)
        try:
            async with inner(app_) as state:
                yield state
        finally:
            if os.environ.get(MULTIPROCESS_DIR_ENV):  # this process's live gauges end with it
                multiprocess.mark_process_dead(os.getpid())

    app.router.lifespan_context = lifespan
