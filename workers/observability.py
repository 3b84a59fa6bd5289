"""Prometheus metrics and log context of a worker process (hooked on Celery's signals).

Imported by ``workers/celery_app.py``; with ``SIFT_WORKER_METRICS_PORT`` set, each worker
process serves its registry at ``http://<SIFT_WORKER_METRICS_HOST>:<port>/metrics`` (a solo
pool is one process per worker: give each worker on a host its own port). The embedded
default runs the worker inside the API process, whose ``GET /metrics`` serves these too.

- ``sift_worker_tasks_started_total{task}``, ``..._succeeded_total{task}``,
  ``..._failed_total{task, exception}``, ``..._retried_total{task, exception}`` (the
  transient retries of ``workers.tasks.jobs.run_tracked``: database, broker, blob store);
- ``sift_worker_task_duration_seconds{task, state}`` and ``sift_worker_tasks_in_progress{task}``;
- ``sift_queue_depth{queue}``: messages waiting per queue, read from Redis (``LLEN``) at each
  scrape, with ``sift_broker_unacked_messages`` (delivered, not yet acknowledged: running) and
  ``sift_broker_up``; nothing on ``memory://``. Every worker reports the same broker, so take
  ``max by (queue)``;
- ``sift_gpu_memory_{allocated,reserved,max_allocated}_bytes{device}``: torch's CUDA caching
  allocator, once this process has used CUDA;
- ``sift_recovery_repairs_total{repair}`` and ``sift_recovery_sweeps_total{outcome}``.

A task's job succeeds or fails inside ``run_tracked``: a job failed for the user's input
(``EngineError``) is a task that succeeded. Task log records carry ``task_id``, ``task_name``
and (once ``run_tracked`` binds it) ``job_id``.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celery.signals import (
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
)
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.config import get_settings
from service.observability import close_log_scope, configure_logging, open_log_scope
from service.queue import RedisLayout, is_redis_url, redis_client
from workers.contracts import TASK_QUEUES

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from workers.tasks.recovery import Repairs

log = logging.getLogger(__name__)

TASKS_STARTED = Counter("sift_worker_tasks_started", "Task deliveries started", ["task"])
TASKS_SUCCEEDED = Counter(
    "sift_worker_tasks_succeeded", "Task deliveries that returned (their job may have failed)",
    ["task"],
)  # fmt: skip
TASKS_FAILED = Counter(
    "sift_worker_tasks_failed", "Task deliveries that raised, by exception type",
    ["task", "exception"],
)  # fmt: skip
TASKS_RETRIED = Counter(
    "sift_worker_tasks_retried", "Task retries (transient infrastructure errors), by cause",
    ["task", "exception"],
)  # fmt: skip
TASK_DURATION = Histogram(
    "sift_worker_task_duration_seconds",
    "Wall time of a task delivery, by its end state (success, failure, retry, ...)",
    ["task", "state"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200),
)
TASKS_IN_PROGRESS = Gauge(
    "sift_worker_tasks_in_progress",
    "Task deliveries running",
    ["task"],
    multiprocess_mode="livesum",
)
RECOVERY_REPAIRS = Counter(
    "sift_recovery_repairs",
    "Repairs by the recovery sweep: tasks resent, jobs restarted, cancelled or failed",
    ["repair"],
)
RECOVERY_SWEEPS = Counter("sift_recovery_sweeps", "Recovery sweeps run, by outcome", ["outcome"])

_running: dict[str, tuple[float, contextvars.Token[Mapping[str, str]]]] = {}
_running_lock = threading.Lock()


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or "unknown")


@task_prerun.connect
def _on_prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    name = _task_name(sender)
    TASKS_STARTED.labels(name).inc()
    TASKS_IN_PROGRESS.labels(name).inc()
    token = open_log_scope(task_id=str(task_id), task_name=name)
    with _running_lock:
        _running[str(task_id)] = (time.monotonic(), token)


@task_postrun.connect
def _on_postrun(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    name = _task_name(sender)
    with _running_lock:
        started = _running.pop(str(task_id), None)
    if state == "SUCCESS":
        TASKS_SUCCEEDED.labels(name).inc()
    if started is not None:
        TASKS_IN_PROGRESS.labels(name).dec()
        began, token = started
        TASK_DURATION.labels(name, (state or "unknown").lower()).observe(time.monotonic() - began)
        try:
            close_log_scope(token)
        except ValueError:  # opened in another context (never in a solo pool): leave it
            pass


@task_failure.connect
def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    TASKS_FAILED.labels(_task_name(sender), type(exception).__name__).inc()


@task_retry.connect
def _on_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    cause = getattr(reason, "exc", None)
    TASKS_RETRIED.labels(_task_name(sender), type(cause or reason).__name__).inc()


def record_sweep(repairs: Repairs) -> None:
    """Count one recovery sweep's repairs (``workers.tasks.recovery.sweep``)."""
    RECOVERY_SWEEPS.labels("ok").inc()
    for repair in ("resent", "restarted", "cancelled", "failed"):
        done = len(getattr(repairs, repair))
        if done:
            RECOVERY_REPAIRS.labels(repair).inc(done)


def record_sweep_error() -> None:
    RECOVERY_SWEEPS.labels("error").inc()


# --- collectors sampled at each scrape --------------------------------------------------------

QUEUES: tuple[str, ...] = tuple(sorted(set(TASK_QUEUES.values())))


class QueueDepthCollector(Collector):
    """``LLEN`` of each queue's lists on a Redis broker, read when scraped."""

    def __init__(self, broker_url: str | None = None, queues: Iterable[str] = QUEUES) -> None:
        self._broker_url, self._queues = broker_url, tuple(queues)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # registering must not reach the broker

    def collect(self) -> Iterable[GaugeMetricFamily]:
        url = self._broker_url or get_settings().broker_url
        if not is_redis_url(url):
            return  # memory:// has no queue to read outside the process
        up = GaugeMetricFamily("sift_broker_up", "1 if the broker answered the depth query")
        depth = GaugeMetricFamily(
            "sift_queue_depth", "Messages waiting in a broker queue", labels=["queue"]
        )
        unacked = GaugeMetricFamily(
            "sift_broker_unacked_messages",
            "Messages delivered to a worker and not yet acknowledged (running tasks)",
        )
        layout = RedisLayout.of()
        try:
            pipe = redis_client(url, 2.0).pipeline(transaction=False)
            for queue in self._queues:
                for name in layout.lists(queue):
                    pipe.llen(name)
            pipe.hlen(layout.unacked)
            counts = [int(n) for n in pipe.execute()]
        except Exception as exc:  # noqa: BLE001 - a scrape reports, it does not raise
            log.warning("queue depth: the broker did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        width = len(layout.steps)
        for i, queue in enumerate(self._queues):
            depth.add_metric([queue], sum(counts[i * width : (i + 1) * width]))
        unacked.add_metric([], counts[-1])
        up.add_metric([], 1)
        yield from (up, depth, unacked)


class GpuMemoryCollector(Collector):
    """torch's CUDA allocator per device, once this process has used CUDA.

    torch is never imported here: a process that has not imported it holds no GPU memory,
    and one that has but never touched CUDA is not made to create a context by a scrape.
    """

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is None or not cuda.is_available() or not cuda.is_initialized():
            return
        families = {
            "allocated": GaugeMetricFamily(
                "sift_gpu_memory_allocated_bytes",
                "GPU memory held by tensors",
                labels=["device"],
            ),
            "reserved": GaugeMetricFamily(
                "sift_gpu_memory_reserved_bytes",
                "GPU memory reserved by torch's caching allocator",
                labels=["device"],
            ),
            "max_allocated": GaugeMetricFamily(
                "sift_gpu_memory_max_allocated_bytes",
                "Peak GPU memory held by tensors since the process started",
                labels=["device"],
            ),
        }
        for index in range(cuda.device_count()):
            device = f"cuda:{index}"
            families["allocated"].add_metric([device], cuda.memory_allocated(index))
            families["reserved"].add_metric([device], cuda.memory_reserved(index))
            families["max_allocated"].add_metric([device], cuda.max_memory_allocated(index))
        yield from families.values()


REGISTRY.register(QueueDepthCollector())
REGISTRY.register(GpuMemoryCollector())


# --- process start-up -------------------------------------------------------------------------

_server_lock = threading.Lock()
_server: WSGIServer | None = None


def start_metrics_server() -> WSGIServer | None:
    """Serve this process's registry on ``SIFT_WORKER_METRICS_PORT`` (once per process)."""
    global _server
    settings = get_settings()
    with _server_lock:
        if _server is None and settings.worker_metrics_port is not None:
            _server, _ = start_http_server(
                settings.worker_metrics_port, addr=settings.worker_metrics_host
            )
            log.info(
                "worker metrics on http://%s:%d/metrics",
                settings.worker_metrics_host, settings.worker_metrics_port,
            )  # fmt: skip
        return _server


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    start_metrics_server()


@setup_logging.connect
def _on_setup_logging(loglevel: int | None = None, logfile: str | None = None, **_: Any) -> None:
    """Celery leaves logging to us once this is connected: the same handler as the API's, at
    the worker's ``--loglevel``."""
    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level, logfile=logfile)
