"""Worker metrics and log context: real Celery tasks run with ``apply`` (the signals fire as in
a worker), the envelope ``run_tracked`` on a migrated SQLite file, the recovery sweep, queue
depth read from a real Redis, and the worker's own metrics server."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from celery import Celery, Task
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError

from service.config import Settings, get_settings
from service.db.migrate import upgrade_head
from service.db.models import Job, TaskDelivery
from service.db.session import SessionLocal, get_engine
from service.observability import bind_log_fields, log_fields, make_handler
from service.queue import _make_celery_app
from service.tenancy import DEFAULT_TENANT_ID
from tests.integration.servers import _redis, free_port
from workers import observability
from workers.tasks import recovery
from workers.tasks.jobs import JobTracker, run_tracked

app = Celery("sift-test-observability", broker="memory://")
OK, FAILS, BLIPS, TRACKED = (f"sift.test.obs.{n}" for n in ("ok", "fails", "blips", "tracked"))
attempts: dict[str, int] = {}


@app.task(name=OK)
def ok_task() -> dict[str, str]:
    bind_log_fields(job_id="job-1")
    logging.getLogger("workers.test").info("inside the task")
    return dict(log_fields())


@app.task(name=FAILS)
def failing_task() -> None:
    raise ValueError("a bug in the task")


@app.task(name=BLIPS, bind=True)
def blipping_task(self: Task, key: str) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] == 1:  # what run_tracked does for a transient error
        exc = OperationalError("SELECT 1", {}, Exception("the database is restarting"))
        raise self.retry(exc=exc, countdown=0, max_retries=3)
    return "done"


@app.task(name=TRACKED, bind=True)
def tracked_task(self: Task, job_id: str) -> None:
    def body() -> None:
        logging.getLogger("workers.test").info("in the body")
        JobTracker(job_id).succeed()

    run_tracked(JobTracker(job_id), body, task=self)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = make_handler("json", stream=stream)
    handler.set_name("test-json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO, logger: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [r for r in lines if r["logger"] == logger]


@pytest.fixture()
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SIFT_ENV", "development")
    monkeypatch.setenv("SIFT_DATABASE_URL", f"sqlite:///{tmp_path / 'sift.db'}")
    get_settings.cache_clear()
    try:
        upgrade_head()
        yield
    finally:
        get_engine().dispose()
        get_settings.cache_clear()


def test_a_task_is_counted_timed_and_logs_its_ids(log_lines: io.StringIO) -> None:
    started, succeeded = (
        value("sift_worker_tasks_started_total", task=OK),
        value("sift_worker_tasks_succeeded_total", task=OK),
    )
    timed = value("sift_worker_task_duration_seconds_count", task=OK, state="success")
    task_id = uuid.uuid4().hex
    fields = ok_task.apply(task_id=task_id).get()
    assert fields == {"task_id": task_id, "task_name": OK, "job_id": "job-1"}
    assert value("sift_worker_tasks_started_total", task=OK) == started + 1
    assert value("sift_worker_tasks_succeeded_total", task=OK) == succeeded + 1
    assert value("sift_worker_task_duration_seconds_count", task=OK, state="success") == timed + 1
    assert value("sift_worker_tasks_in_progress", task=OK) == 0
    (record,) = records(log_lines, "workers.test")
    assert (record["task_id"], record["task_name"], record["job_id"]) == (task_id, OK, "job-1")
    assert log_fields() == {}  # the task's scope ended with it


def test_a_failing_task_is_counted_by_exception_type() -> None:
    failed = value("sift_worker_tasks_failed_total", task=FAILS, exception="ValueError")
    result = failing_task.apply()
    assert result.failed()
    assert value("sift_worker_tasks_failed_total", task=FAILS, exception="ValueError") == (
        failed + 1
    )
    assert value("sift_worker_tasks_succeeded_total", task=FAILS) == 0
    assert value("sift_worker_task_duration_seconds_count", task=FAILS, state="failure") >= 1


def test_a_transient_retry_is_counted_by_its_cause() -> None:
    retried = value("sift_worker_tasks_retried_total", task=BLIPS, exception="OperationalError")
    succeeded = value("sift_worker_tasks_succeeded_total", task=BLIPS)
    assert blipping_task.apply(kwargs={"key": uuid.uuid4().hex}).get() == "done"
    assert value("sift_worker_tasks_retried_total", task=BLIPS, exception="OperationalError") == (
        retried + 1
    )
    assert value("sift_worker_tasks_succeeded_total", task=BLIPS) == succeeded + 1


def test_run_tracked_puts_the_job_id_in_the_tasks_log_records(
    database: None, log_lines: io.StringIO
) -> None:
    with SessionLocal() as session:
        job = Job(kind="score_set", tenant_id=DEFAULT_TENANT_ID)
        session.add(job)
        session.commit()
        job_id = job.id
    task_id = uuid.uuid4().hex
    assert tracked_task.apply(kwargs={"job_id": job_id}, task_id=task_id).successful()
    (record,) = records(log_lines, "workers.test")
    assert (record["job_id"], record["task_id"], record["task_name"]) == (job_id, task_id, TRACKED)
    assert JobTracker(job_id).read().status == "succeeded"


def test_recovery_repairs_and_sweeps_are_counted(
    database: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "send", lambda *args: None)
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with SessionLocal() as session:
        job = Job(kind="score_set", tenant_id=DEFAULT_TENANT_ID, status="running")
        session.add(job)
        session.flush()
        session.add(
            TaskDelivery(
                task_id=f"t-{job.id}",
                job_id=job.id,
                task_name="sift.score_set.run",
                payload={"score_set_id": "s1"},
                deliveries=1,
                heartbeat_at=now - timedelta(minutes=5),  # its worker died
                resent=0,
            )
        )
        session.commit()
    resent, sweeps = (
        value("sift_recovery_repairs_total", repair="resent"),
        value("sift_recovery_sweeps_total", outcome="ok"),
    )
    assert recovery.sweep(stale_s=60, lost_s=3600, now=now).resent == [f"t-{job.id}"]
    assert value("sift_recovery_repairs_total", repair="resent") == resent + 1
    assert value("sift_recovery_sweeps_total", outcome="ok") == sweeps + 1
    assert not recovery.sweep(stale_s=60, lost_s=3600, now=now)  # nothing left to repair
    assert value("sift_recovery_repairs_total", repair="resent") == resent + 1
    assert value("sift_recovery_sweeps_total", outcome="ok") == sweeps + 2


def test_a_failed_sweep_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFT_SWEEP_INTERVAL_S", "0.01")
    get_settings.cache_clear()

    def sweep() -> None:
        raise OperationalError("SELECT 1", {}, Exception("the database is down"))

    monkeypatch.setattr(recovery, "sweep", sweep)
    errors = value("sift_recovery_sweeps_total", outcome="error")
    sweeper = recovery.Sweeper().start()
    try:
        deadline = time.monotonic() + 10
        while value("sift_recovery_sweeps_total", outcome="error") < errors + 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        sweeper.stop()
        get_settings.cache_clear()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
def test_queue_depth_is_read_from_redis(tmp_path: Path) -> None:
    with _redis(tmp_path) as url:
        broker = _make_celery_app(url)
        for priority in (None, None, 9):
            broker.send_task(OK, queue="sift.gpu", priority=priority)
        broker.send_task(OK, queue="sift.cpu")
        families = {f.name: f for f in observability.QueueDepthCollector(url).collect()}
        depth = {s.labels["queue"]: s.value for s in families["sift_queue_depth"].samples}
        assert depth == {"sift.cpu": 1, "sift.events": 0, "sift.gpu": 3}  # prioritised ones too
        assert families["sift_broker_up"].samples[0].value == 1
        assert families["sift_broker_unacked_messages"].samples[0].value == 0
        with broker.connection_for_read() as connection:  # a worker takes one: it runs
            message = connection.SimpleQueue("sift.cpu").get(timeout=5)
            families = {f.name: f for f in observability.QueueDepthCollector(url).collect()}
            depth = {s.labels["queue"]: s.value for s in families["sift_queue_depth"].samples}
            assert depth["sift.cpu"] == 0
            assert families["sift_broker_unacked_messages"].samples[0].value == 1
            message.ack()


def test_queue_depth_reports_an_unreachable_broker_and_nothing_for_memory() -> None:
    down = observability.QueueDepthCollector(f"redis://127.0.0.1:{free_port()}/0")
    families = list(down.collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("sift_broker_up", [0])]
    assert list(observability.QueueDepthCollector("memory://localhost/").collect()) == []


class FakeCuda:
    """torch.cuda as a process that has used one GPU sees it."""

    initialized = True

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return 1

    def memory_allocated(self, index: int) -> int:
        return 3 * 2**30

    def memory_reserved(self, index: int) -> int:
        return 4 * 2**30

    def max_memory_allocated(self, index: int) -> int:
        return 5 * 2**30


def test_gpu_memory_is_reported_once_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = observability.GpuMemoryCollector()
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    samples = {
        (s.name, s.labels["device"]): s.value for f in collector.collect() for s in f.samples
    }
    assert samples == {
        ("sift_gpu_memory_allocated_bytes", "cuda:0"): 3 * 2**30,
        ("sift_gpu_memory_reserved_bytes", "cuda:0"): 4 * 2**30,
        ("sift_gpu_memory_max_allocated_bytes", "cuda:0"): 5 * 2**30,
    }
    cuda.initialized = False  # torch imported, CUDA never touched: a scrape must not start it
    assert list(collector.collect()) == []
    monkeypatch.delitem(sys.modules, "torch")  # a process without torch holds no GPU memory
    assert list(collector.collect()) == []


def test_the_worker_serves_its_metrics_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    settings = Settings(worker_metrics_port=port, worker_metrics_host="127.0.0.1")
    monkeypatch.setattr(observability, "get_settings", lambda: settings)
    monkeypatch.setattr(observability, "_server", None)
    server = observability.start_metrics_server()
    assert server is not None
    try:
        assert observability.start_metrics_server() is server  # once per process
        ok_task.apply()
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert f'sift_worker_tasks_started_total{{task="{OK}"}}' in response.text
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_metrics_server_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_server", None)
    monkeypatch.setattr(observability, "get_settings", lambda: Settings())
    assert observability.start_metrics_server() is None
