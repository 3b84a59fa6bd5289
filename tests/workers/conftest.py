"""A migrated database per test for the worker-side tests: a SQLite file, and a Postgres
schema of its own when ``SIFT_TEST_DATABASE_URL`` is set (CI); the settings point at it and at
a blob folder, as a worker process's would."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from service.config import get_settings
from service.db.migrate import upgrade_head
from service.db.models import Dataset, Job, Model, Record, Valuation
from service.db.session import SessionLocal, get_engine, make_engine, normalize_database_url
from service.tenancy import DEFAULT_TENANT_ID
from workers.contracts import VALUATION_FEATURIZE_SHARD, VALUATION_SCORE, FeatureShardTask
from workers.tasks import valuation as valuation_tasks
from workers.tasks.jobs import run_tracked


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sift.db'}"
        return
    base = os.environ.get("SIFT_TEST_DATABASE_URL")
    if not base:
        pytest.skip("SIFT_TEST_DATABASE_URL is not set")
    schema = f"sift_workers_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            normalize_database_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture()
def migrated(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The settings' database, migrated; its URL."""
    monkeypatch.setenv("SIFT_ENV", "development")
    monkeypatch.setenv("SIFT_DATABASE_URL", database_url)
    monkeypatch.setenv("SIFT_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    monkeypatch.delenv("SIFT_MAX_TASK_DELIVERIES", raising=False)
    get_settings.cache_clear()
    try:
        upgrade_head()
        yield database_url
    finally:
        get_engine().dispose()
        get_settings.cache_clear()


def valuation_rows(status: str = "running", **job_fields: object) -> tuple[str, str]:
    """A valuation of the default tenant (with its dataset and model), its job ``status``;
    (valuation id, job id)."""
    with SessionLocal() as session:
        dataset = Dataset(
            tenant_id=DEFAULT_TENANT_ID, name="d", n_records=1, content_hash="h" * 64, duplicates=[]
        )
        model = Model(tenant_id=DEFAULT_TENANT_ID, name=uuid.uuid4().hex, source="builtin:x")
        job = Job(tenant_id=DEFAULT_TENANT_ID, kind="valuation", status=status, **job_fields)
        session.add_all([dataset, model, job])
        session.flush()
        row = Valuation(
            tenant_id=DEFAULT_TENANT_ID,
            job_id=job.id,
            model_id=model.id,
            pool_dataset_id=dataset.id,
            probe_dataset_id=dataset.id,
            method="less",
            settings={},
            skipped=[],
        )
        session.add(row)
        session.commit()
        return row.id, job.id


def insert_dataset(
    session: Session, name: str, rows: list[dict[str, Any]], *, subtasks: bool = False
) -> str:
    """A dataset of the default tenant holding ``rows`` (``id``, ``messages``, optional
    ``metadata``) as its records in order, flushed, not committed; its id. Its content hash is
    the rows' (the same rows: the same content, as uploads hash them). Each record's subtask is
    its row's ``subtask`` with ``subtasks``, else None."""
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    dataset = Dataset(
        tenant_id=DEFAULT_TENANT_ID,
        name=name,
        n_records=len(rows),
        content_hash=digest,
        duplicates=[],
    )
    session.add(dataset)
    session.flush()
    for i, row in enumerate(rows):
        session.add(
            Record(
                tenant_id=DEFAULT_TENANT_ID,
                dataset_id=dataset.id,
                record_id=row["id"],
                position=i,
                subtask=row.get("subtask") if subtasks else None,
                messages=row["messages"],
                metadata_=row.get("metadata", {}),
                raw=row,
                content_hash=uuid.uuid4().hex,
            )
        )
    return dataset.id


def run_valuation(
    monkeypatch: pytest.MonkeyPatch,
    *,
    method: str,
    model_id: str,
    pool_id: str,
    probe_id: str | None,
    settings: dict[str, Any],
    reward_spec_id: str | None = None,
    assist_dataset_id: str | None = None,
) -> tuple[str, list[str]]:
    """Create a valuation (queued job) and run it to the end as the workers would: its first
    task, then every shard and scoring task it sends, inline in order. It must succeed; its id
    and the names of the tasks it sent."""
    with SessionLocal() as session:
        job = Job(tenant_id=DEFAULT_TENANT_ID, kind="valuation", status="queued")
        session.add(job)
        session.flush()
        valuation = Valuation(
            tenant_id=DEFAULT_TENANT_ID,
            job_id=job.id,
            model_id=model_id,
            pool_dataset_id=pool_id,
            probe_dataset_id=probe_id,
            reward_spec_id=reward_spec_id,
            assist_dataset_id=assist_dataset_id,
            method=method,
            settings=settings,
            skipped=[],
        )
        session.add(valuation)
        session.commit()
        valuation_id = valuation.id
    queue: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        valuation_tasks, "enqueue", lambda name, payload, **_: queue.append((name, payload))
    )
    ctx = valuation_tasks.Context(valuation_id)
    run_tracked(ctx.job, lambda: valuation_tasks.featurize_valuation(ctx))
    sent = []
    while queue:
        name, payload = queue.pop(0)
        sent.append(name)
        ctx = valuation_tasks.Context(valuation_id)
        body: Callable[[], None]
        if name == VALUATION_FEATURIZE_SHARD:
            assert isinstance(payload, FeatureShardTask)
            body = functools.partial(valuation_tasks.featurize_shard, ctx, payload)
        else:
            assert name == VALUATION_SCORE
            body = functools.partial(valuation_tasks.score_valuation, ctx)
        run_tracked(ctx.job, body, already_running=True)
    with SessionLocal() as session:
        row = session.get(Valuation, valuation_id)
        assert row is not None
        assert row.job.status == "succeeded", (row.job.error, row.job.notes)
    return valuation_id, sent
