"""A resource deleted while its worker runs: the worker drops its work cleanly.

Real Celery tasks (``apply``) and the real worker helpers on a migrated SQLite file (and a
Postgres schema of their own with ``SIFT_TEST_DATABASE_URL``). The delete is the API's own
(``service.deletion`` in a tenant session, committed), made from inside the task's body, as a
``DELETE`` arriving mid-job would: the task must end without an error, re-create no row of the
deleted resource, and collect the cache it created after the delete.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery, Task
from sqlalchemy import func, select

from service import deletion
from service.blobs import FilesystemBlobStore, TenantBlobStore
from service.config import get_settings
from service.db.models import (
    Dataset,
    Job,
    Model,
    Sample,
    TaskDelivery,
    Valuation,
    WarmupRun,
)
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from tests.workers.conftest import valuation_rows
from workers.tasks import valuation as valuation_tasks
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked

app = Celery("sift-test-deleted", broker="memory://")
TASK_NAME = "sift.test.deleted"
reached: list[str] = []


@pytest.fixture(autouse=True)
def database(migrated: str) -> None:
    reached.clear()


def blobs() -> TenantBlobStore:
    root = get_settings().blob_url.removeprefix("file://")
    return TenantBlobStore(FilesystemBlobStore(root), DEFAULT_TENANT_ID)


def _valuation(status: str = "running") -> tuple[str, str]:
    return valuation_rows(status)


def api_delete(valuation_id: str) -> None:
    """``DELETE /v1/valuations/{id}`` as the API runs it: tenant session, commit, blobs."""
    with SessionLocal() as session:
        session.info["tenant_id"] = DEFAULT_TENANT_ID
        deleted = deletion.delete_resource(session, "valuation", valuation_id)
        session.commit()
    deleted.remove_blobs(blobs())


def _count(table: type, *where: object) -> int:
    with SessionLocal() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


@app.task(name=TASK_NAME, bind=True)
def deleted_mid_job(self: Task, valuation_id: str, job_id: str) -> None:
    """Deleted while it runs; then it trains a warmup run, as a valuation would, and reports
    progress: that report finds the job gone."""
    job = JobTracker(job_id)

    def body() -> None:
        job.stage("warmup", total=2)
        reached.append("before the delete")
        api_delete(valuation_id)
        with SessionLocal() as session:  # what _warmup_checkpoints creates first
            dataset_id = session.scalars(select(Dataset.id)).one()
            model_id = session.scalars(select(Model.id)).one()
            session.add(
                WarmupRun(
                    content_key="k" * 32,
                    model_id=model_id,
                    pool_dataset_id=dataset_id,
                    settings={},
                    status="running",
                )
            )
            session.commit()
        blobs().put_bytes(f"warmup/{'k' * 32}/epoch-001/adapter.safetensors", b"x")
        job.advance(1)
        reached.append("after the delete")  # never: advance found the job gone

    run_tracked(job, body, already_running=True, task=self)


def test_a_task_whose_valuation_is_deleted_mid_job_drops_its_work() -> None:
    valuation_id, job_id = _valuation()
    result = deleted_mid_job.apply(
        kwargs={"valuation_id": valuation_id, "job_id": job_id}, task_id="t-deleted"
    )
    assert result.successful(), result.traceback  # acknowledged, not failed or retried
    assert reached == ["before the delete"]
    assert _count(Valuation) == _count(Job) == _count(TaskDelivery) == 0
    assert _count(WarmupRun) == 0  # created after the delete, collected by the worker
    assert blobs().list_keys() == []


def test_a_delivery_for_a_deleted_job_is_dropped() -> None:
    valuation_id, job_id = _valuation("queued")
    api_delete(valuation_id)
    result = deleted_mid_job.apply(
        kwargs={"valuation_id": valuation_id, "job_id": job_id}, task_id="t-late"
    )
    assert result.successful(), result.traceback
    assert reached == [] and _count(Job) == _count(TaskDelivery) == 0


def test_the_valuation_tasks_write_nothing_for_a_deleted_valuation() -> None:
    valuation_id, _ = _valuation()
    ctx = SimpleNamespace(valuation_id=valuation_id, tenant_id=DEFAULT_TENANT_ID)
    api_delete(valuation_id)
    sample = b'{"probe_record_id": "p", "sample_index": 0, "text": "t", "n_tokens": 1, '
    sample += b'"finished": true, "reward": 1.0}\n'
    with pytest.raises(ResourceDeleted):
        valuation_tasks._store_samples(ctx, 1, sample)  # type: ignore[arg-type]
    with pytest.raises(ResourceDeleted):
        valuation_tasks._record_skipped(ctx, {}, {})  # type: ignore[arg-type]
    with pytest.raises(ResourceDeleted):
        valuation_tasks._set_warmup_run(valuation_id, "r")
    assert _count(Sample) == 0 and _count(Valuation) == 0
