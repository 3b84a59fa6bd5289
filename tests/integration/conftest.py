"""A production-shaped stack per test session: a uvicorn API process and a Celery worker process
on Postgres, Redis and S3 — real servers, no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.integration.servers import (
    Servers,
    _process,
    free_port,
    real_servers,
    s3_client,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
STACK_API_WORKERS = 2


class WorkerProcess:
    """The stack's Celery worker, which a test may kill (SIGKILL, no warm shutdown) and restart."""

    def __init__(
        self, env: dict[str, str], logs: Path, name: str, queues: str = "sift.gpu,sift.cpu"
    ) -> None:
        self.env, self.logs, self.name, self.queues = env, logs, name, queues
        self.starts = 0
        self._running = contextlib.ExitStack()

    def start(self) -> None:
        self.starts += 1
        cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"]
        cmd += ["--queues", self.queues, "--pool", "solo", "--concurrency", "1"]
        cmd += ["--loglevel", "INFO", "--hostname", f"{self.name}-{self.starts}@%h"]
        log = self.logs / f"worker-{self.name}-{self.starts}.log"
        self.log = log
        self.proc = self._running.enter_context(_process(cmd, log, env=self.env))

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self._running.close()


@dataclass(frozen=True)
class Stack:
    api: str
    database_url: str
    bucket: str
    s3_endpoint_url: str
    env: dict[str, str]
    logs: Path
    worker: WorkerProcess
    """The GPU worker (``sift.gpu``, ``sift.cpu``), as docker-compose's ``worker``."""
    api_key: str
    """An admin key of tenant ``integration``, made with ``sift keys create``."""
    api_metrics_dir: Path
    """Where the API processes share their Prometheus samples (one file set per process)."""
    events_worker: WorkerProcess
    """The worker of ``sift.events`` (webhook deliveries), as docker-compose's ``events``."""

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


def create_key(env: dict[str, str], tenant: str, role: str = "admin") -> str:
    """A new API key of ``tenant``, made as an operator would: ``sift keys create``."""
    made = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", tenant, "--role", role],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return str(json.loads(made.stdout)["key"])


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with real_servers() as s:
        yield s


@pytest.fixture(scope="session")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    admin = create_engine(servers.database_url, isolation_level="AUTOCOMMIT")
    db_name = f"sift_it_{suffix}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    database_url = (
        make_url(servers.database_url).set(database=db_name).render_as_string(hide_password=False)
    )
    bucket = f"sift-it-{suffix}"
    broker = urlsplit(servers.broker_url)
    broker_url = f"redis://{broker.hostname}:{broker.port}/3"  # a db of its own
    env = {
        **os.environ,
        "SIFT_ENV": "production",
        "SIFT_DATABASE_URL": database_url,
        "SIFT_BROKER_URL": broker_url,
        "SIFT_BLOB_URL": f"s3://{bucket}",
        "SIFT_S3_ENDPOINT_URL": servers.s3_endpoint_url,
        "SIFT_EMBEDDED_WORKER": "false",
        "SIFT_OUTBOUND_ALLOW": "127.0.0.1/32",  # the tests' judges and endpoints
        "SIFT_SECRET_KEY": os.environ.get(
            "SIFT_SECRET_KEY", "4Dk0d5qCqBH3o3pHqW2d3a1yRzGZbq8q3v9o9r2Yb0Y="
        ),
        "PYTHONUNBUFFERED": "1",
        # The broker redelivers a killed worker's task only after an hour (as in production);
        # the recovery sweep resends it once its heartbeat is 5 s stale (production: 60 s).
        "SIFT_BROKER_VISIBILITY_TIMEOUT_S": "3600",
        "SIFT_HEARTBEAT_INTERVAL_S": "1",
        "SIFT_HEARTBEAT_STALE_S": "5",
        "SIFT_SWEEP_INTERVAL_S": "1",
    }
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    api_key = create_key(env, "integration")
    import redis

    redis.Redis.from_url(broker_url).flushdb()
    logs = tmp_path_factory.mktemp("stack-logs")
    port = free_port()
    # As docker-compose runs it: `sift serve` with two API processes on one port.
    api_cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
    api_cmd += ["--port", str(port), "--workers", str(STACK_API_WORKERS)]
    metrics_dir = tmp_path_factory.mktemp("api-metrics")  # the API processes' samples
    api_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    worker = WorkerProcess(env, logs, f"it-{suffix}")
    events_worker = WorkerProcess(env, logs, f"it-events-{suffix}", queues="sift.events")
    try:
        worker.start()
        events_worker.start()
        with (
            contextlib.closing(worker),
            contextlib.closing(events_worker),
            _process(api_cmd, logs / "api.log", env=api_env),
        ):
            api = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"{api}/readyz").raise_for_status(), "the API", timeout=60)
            yield Stack(
                api,
                database_url,
                bucket,
                servers.s3_endpoint_url,
                env,
                logs,
                worker,
                api_key,
                metrics_dir,
                events_worker,
            )
    finally:
        for path in sorted(logs.glob("*.log")):
            sys.stderr.write(f"\n--- {path.name} (tail) ---\n{path.read_text()[-3000:]}\n")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        s3 = s3_client(servers.s3_endpoint_url)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - best-effort cleanup of a throwaway bucket
            pass


@pytest.fixture()
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api, timeout=60, headers=stack.headers) as client:
        yield client
