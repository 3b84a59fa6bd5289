"""A migrated database per test for the worker-side tests: a SQLite file, and a Postgres
schema of its own when ``SIFT_TEST_DATABASE_URL`` is set (CI); the settings point at it and at
a blob folder, as a worker process's would."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from service.config import get_settings
from service.db.migrate import upgrade_head
from service.db.models import Dataset, Job, Model, Valuation
from service.db.session import SessionLocal, get_engine, make_engine, normalize_database_url
from service.tenancy import DEFAULT_TENANT_ID


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
