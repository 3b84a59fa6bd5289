"""Fixtures for the service tests.

Database: ``SIFT_TEST_DATABASE_URL`` (CI: a real Postgres) gets a fresh schema per session,
migrated with ``alembic upgrade head`` and dropped at the end; without it, a temporary SQLite
file, migrated the same way. Each test runs inside a transaction that is rolled back; the
endpoints' ``session.commit()`` only releases a SAVEPOINT.

The queue is the only mock: :class:`RecordingQueue` records the tasks the API sends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from service.auth import keys
from service.blobs import BlobStore, FilesystemBlobStore, TenantBlobStore, get_blob_store
from service.client import Client
from service.config import Settings, get_settings
from service.db.base import utcnow
from service.db.migrate import upgrade_head
from service.db.models import Job, JobStatus, Score, TaskDelivery, Valuation
from service.db.session import get_db, make_engine, normalize_database_url
from service.main import create_app
from service.queue import get_queue
from tests.conftest import TEST_SECRET_KEY


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("SIFT_TEST_DATABASE_URL")
    if not base:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'sift.db'}"
        upgrade_head(url)
        yield url
        return
    schema = f"sift_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = (
            normalize_database_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        upgrade_head(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def db(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(
            bind=connection,
            join_transaction_mode="create_savepoint",
            autoflush=False,
            expire_on_commit=False,
        )
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


@dataclass
class RecordingQueue:
    """Stands in for Celery: records ``(task_name, kwargs)``; can be told to fail."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_with: Exception | None = None
    ping_error: Exception | None = None

    def enqueue(self, task_name: str, payload: BaseModel, *, job_id: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((task_name, payload.model_dump(mode="json")))

    def ping(self) -> None:
        if self.ping_error is not None:
            raise self.ping_error


@pytest.fixture()
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture()
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        env="development",
        database_url=database_url,
        blob_url=f"file://{tmp_path / 'blobs'}",
        broker_url="memory://",
        embedded_worker=False,
        max_upload_bytes=256 * 1024,
        page_size_max=50,
        check_model_paths=True,
        outbound_allow="127.0.0.1/32",  # the tests' judges and endpoints listen on loopback
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture()
def blob_store(settings: Settings) -> FilesystemBlobStore:
    return FilesystemBlobStore(settings.blob_url.removeprefix("file://"))


@pytest.fixture()
def app(
    db: Session, queue: RecordingQueue, settings: Settings, blob_store: FilesystemBlobStore
) -> FastAPI:
    app = create_app()

    def test_db() -> Iterator[Session]:
        try:
            yield db
        except BaseException:
            db.rollback()
            raise

    app.dependency_overrides[get_db] = test_db
    app.dependency_overrides[get_queue] = lambda: queue
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_blob_store] = lambda: blob_store
    return app


def api_key(db: Session, tenant: str = "team-a", role: str = "admin") -> str:
    """A new key of ``tenant`` (created if new), committed to the test's transaction."""
    row = keys.get_or_create_tenant(db, tenant)
    _, key = keys.create_key(db, row.id, name=f"test {role}", role=role)
    db.commit()
    return key


@pytest.fixture()
def make_client(app: FastAPI, db: Session) -> Iterator[Callable[..., TestClient]]:
    """``make_client(tenant="team-a", role="admin")``: a client carrying a new key."""
    with contextlib.ExitStack() as stack:

        def make(tenant: str = "team-a", role: str = "admin") -> TestClient:
            client = stack.enter_context(TestClient(app, raise_server_exceptions=True))
            client.headers["authorization"] = f"Bearer {api_key(db, tenant, role)}"
            return client

        yield make


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """An admin of tenant ``team-a``."""
    return make_client()


@pytest.fixture()
def tenant_blobs(client: TestClient, blob_store: FilesystemBlobStore, db: Session) -> BlobStore:
    """The blob store as tenant ``team-a`` (the ``client`` fixture's) sees it."""
    tenant = keys.get_or_create_tenant(db, "team-a")
    return TenantBlobStore(blob_store, tenant.id)


@pytest.fixture()
def sift(app: FastAPI, db: Session) -> Iterator[Client]:
    """Sift's client of the app in process, with a key of the ``client`` fixture's tenant."""
    with TestClient(app, raise_server_exceptions=True) as http:
        yield Client(api_key=api_key(db), http=http)


@pytest.fixture()
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    """A client with no API key."""
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


# --- builders ---------------------------------------------------------------------------------


def records(n: int, subtask: str | None = None, prefix: str = "r") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        rec: dict[str, Any] = {"id": f"{prefix}{i}", "prompt": f"question {prefix}{i}?"}
        rec["response"] = f"answer {i}"
        if subtask is not None:
            rec["subtask"] = subtask
        out.append(rec)
    return out


@pytest.fixture()
def make_dataset(client: TestClient) -> Callable[..., dict[str, Any]]:
    def make(n: int = 3, name: str = "ds", recs: list[dict[str, Any]] | None = None) -> Any:
        response = client.post(
            "/v1/datasets", json={"name": name, "records": recs or records(n, prefix=name)}
        )
        assert response.status_code == 201, response.text
        return response.json()

    return make


@pytest.fixture()
def model(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture()
def make_valuation(
    client: TestClient, make_dataset: Callable[..., dict[str, Any]], model: dict[str, Any]
) -> Callable[..., dict[str, Any]]:
    def make(pool: dict[str, Any] | None = None, **body: Any) -> Any:
        pool = pool or make_dataset(5, name="pool")
        probe = make_dataset(2, name="probe")
        payload = {
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probe["id"],
            **body,
        }
        response = client.post("/v1/valuations", json=payload)
        assert response.status_code == 202, response.text
        return response.json()

    return make


@pytest.fixture()
def make_scored(
    db: Session,
    make_dataset: Callable[..., dict[str, Any]],
    make_valuation: Callable[..., dict[str, Any]],
) -> Callable[[list[dict[str, Any]], list[tuple[str, float]]], dict[str, Any]]:
    """``make_scored(recs, ranked)``: a succeeded valuation of a pool of ``recs`` whose scores
    are ``ranked`` (``(record_id, score)``, best first)."""

    def make(recs: list[dict[str, Any]], ranked: list[tuple[str, float]]) -> dict[str, Any]:
        valuation = make_valuation(pool=make_dataset(name="pool", recs=recs))
        finish_valuation(db, valuation["id"], ranked)
        return valuation

    return make


def finish_valuation(
    db: Session,
    valuation_id: str,
    scores: list[tuple[str, float]] | None = None,
    status: JobStatus = JobStatus.succeeded,
) -> None:
    """Do what the worker does at the end: scores ranked best first, the job finished."""
    valuation = db.get(Valuation, valuation_id)
    assert valuation is not None
    job = db.get(Job, valuation.job_id)
    assert job is not None
    job.status = status.value
    job.started_at = job.started_at or utcnow()
    job.finished_at = utcnow()
    if scores is not None:
        for rank, (record_id, score) in enumerate(scores):
            db.add(
                Score(
                    valuation_id=valuation_id,
                    record_id=record_id,
                    rank=rank,
                    score=score,
                    per_subtask={"default": score},
                )
            )
        valuation.n_scored = len(scores)
    db.commit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_running(db: Session, job_id: str, *, beating: bool = True) -> None:
    """What a worker does when it picks a job up: the job running, and (``beating``) a live
    delivery of its task in ``task_deliveries`` with a fresh heartbeat."""
    job = db.get(Job, job_id)
    assert job is not None
    job.status, job.started_at = JobStatus.running.value, utcnow()
    if beating:
        db.add(
            TaskDelivery(
                task_id=f"task-{job_id}",
                job_id=job_id,
                task_name="sift.test",
                deliveries=1,
                heartbeat_at=utcnow(),
                resent=0,
            )
        )
    db.commit()
