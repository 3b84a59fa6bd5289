"""A task whose execution kills its worker comes back only ``max_task_deliveries`` times.

Real Celery tasks (``bind=True``, run with ``apply`` under a fixed task id, as a redelivered
message keeps its id) on a migrated SQLite file, and on a Postgres schema of their own when
``SIFT_TEST_DATABASE_URL`` is set (CI). A worker death is a real one: the delivery runs in a
forked child whose body SIGKILLs its own process, so nothing after the count is committed.
"""

from __future__ import annotations

import os
import signal

import pytest
from celery import Celery, Task
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service.config import get_settings
from service.db.models import Job, TaskDelivery
from service.db.session import SessionLocal, get_engine
from service.tenancy import DEFAULT_TENANT_ID
from workers.engine.errors import EngineError
from workers.tasks.jobs import JobTracker, run_tracked

app = Celery("sift-test-deliveries", broker="memory://")
TASK_NAME = "sift.test.deliveries"
ran: list[tuple[str, int | None]] = []
"""(action, the delivery count the body saw) for each body that ran in this process."""


def _count(task_id: str | None) -> int | None:
    if task_id is None:
        return None
    with SessionLocal() as session:
        row = session.get(TaskDelivery, task_id)
        return None if row is None else row.deliveries


@app.task(name=TASK_NAME, bind=True)
def job_task(self: Task, job_id: str, action: str) -> None:
    def body() -> None:
        ran.append((action, _count(self.request.id)))
        if action == "die":  # a record whose program takes the worker down
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "engine_error":
            raise EngineError("record r1 is malformed")
        if action == "blip" and sum(1 for a, _ in ran if a == "blip") <= 2:
            raise OperationalError("SELECT 1", {}, Exception("the database is restarting"))
        JobTracker(job_id).succeed()

    run_tracked(JobTracker(job_id), body, task=self)


@pytest.fixture(autouse=True)
def database(migrated: str) -> None:
    ran.clear()


def _job() -> str:
    with SessionLocal() as session:
        job = Job(kind="score_set", tenant_id=DEFAULT_TENANT_ID)
        session.add(job)
        session.commit()
        return job.id


def _job_row(job_id: str) -> Job:
    with SessionLocal() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _deliver(job_id: str, task_id: str, action: str = "ok") -> None:
    """One delivery of the task in this process; it must end normally."""
    result = job_task.apply(kwargs={"job_id": job_id, "action": action}, task_id=task_id)
    assert result.successful(), result.traceback  # so the message would be acknowledged


def _deliver_and_die(job_id: str, task_id: str) -> None:
    """One delivery whose body kills its worker: a forked child, SIGKILLed mid-task."""
    pid = os.fork()
    if pid == 0:  # the child: a worker that dies during the task
        try:
            get_engine().dispose(close=False)  # the parent's connections are not ours
            job_task.apply(kwargs={"job_id": job_id, "action": "die"}, task_id=task_id)
        finally:
            os._exit(1)  # only if the body did not kill us
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_normal_delivery_is_counted_while_it_runs_and_cleared_when_it_ends() -> None:
    job_id = _job()
    _deliver(job_id, "t-ok")
    assert ran == [("ok", 1)]
    assert _job_row(job_id).status == "succeeded"
    assert _count("t-ok") is None


def test_an_engine_error_ends_the_delivery_too() -> None:
    job_id = _job()
    _deliver(job_id, "t-err", "engine_error")
    job = _job_row(job_id)
    assert (job.status, job.error) == ("failed", "record r1 is malformed")
    assert _count("t-err") is None


def test_a_delivery_after_a_worker_death_resumes() -> None:
    job_id = _job()
    _deliver_and_die(job_id, "t-once")
    assert _count("t-once") == 1  # committed before the body, survived the death
    assert _job_row(job_id).status == "running"
    _deliver(job_id, "t-once")
    assert ran == [("ok", 2)]
    assert _job_row(job_id).status == "succeeded"
    assert _count("t-once") is None


def test_the_delivery_after_the_limit_fails_the_job_without_running_the_body() -> None:
    job_id = _job()
    for _ in range(3):  # the default SIFT_MAX_TASK_DELIVERIES
        _deliver_and_die(job_id, "t-poison")
    assert _count("t-poison") == 3 and _job_row(job_id).status == "running"
    _deliver(job_id, "t-poison")
    assert ran == []  # the fourth delivery did not run the body
    job = _job_row(job_id)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error is not None and job.error.startswith(
        f"task {TASK_NAME} was delivered 4 times and its worker died during each of the first 3"
    )
    assert "the job is failed so the worker pool stays up" in job.error
    with SessionLocal() as session:  # the evidence stays, until the job is deleted
        row = session.scalars(select(TaskDelivery).where(TaskDelivery.job_id == job_id)).one()
        assert (row.task_id, row.task_name, row.deliveries) == ("t-poison", TASK_NAME, 4)
        assert row.first_delivered_at <= row.last_delivered_at
        session.delete(session.get(Job, job_id))
        session.commit()
    assert _count("t-poison") is None  # ON DELETE CASCADE
    _deliver(_job(), "t-other")  # an ordinary task still runs
    assert ran == [("ok", 1)]


def test_the_limit_is_a_setting_and_counts_per_task_not_per_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIFT_MAX_TASK_DELIVERIES", "1")
    get_settings.cache_clear()
    job_id = _job()
    _deliver_and_die(job_id, "shard-0")
    _deliver(job_id, "shard-1")  # a sibling task of the same job, delivered once: runs
    assert ran == [("ok", 1)]
    assert _job_row(job_id).status == "succeeded"
    _deliver(job_id, "shard-0")  # one too many, but the job is over: nothing to fail
    assert _job_row(job_id).status == "succeeded" and _job_row(job_id).error is None


def test_a_job_failed_by_a_poison_delivery_is_not_failed_twice() -> None:
    job_id = _job()
    for _ in range(3):
        _deliver_and_die(job_id, "t-again")
    _deliver(job_id, "t-again")
    first = _job_row(job_id)
    _deliver(job_id, "t-again")  # e.g. a duplicate of the message: the job is already failed
    again = _job_row(job_id)
    assert (again.status, again.error, again.finished_at) == (
        "failed",
        first.error,
        first.finished_at,
    )
    assert ran == [] and _count("t-again") == 5


def test_called_directly_nothing_is_counted() -> None:
    job_id = _job()
    job_task(job_id=job_id, action="ok")  # not a delivery: no request id
    assert ran == [("ok", None)]
    with SessionLocal() as session:
        assert session.scalars(select(TaskDelivery)).all() == []


def test_an_infrastructure_blip_is_retried_not_failed_nor_counted_as_a_death(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database error mid-task: the task is retried (Celery retry, backoff) and the job goes
    on; the retries are deliveries but not deaths, so they never trip the poison limit."""
    from workers.tasks import jobs

    monkeypatch.setattr(jobs, "TRANSIENT_BACKOFF_S", 0.0)
    monkeypatch.setenv("SIFT_MAX_TASK_DELIVERIES", "1")
    get_settings.cache_clear()
    job_id = _job()
    app.conf.task_always_eager = True  # the eager retry runs the next attempt at once
    try:
        job_task.apply(kwargs={"job_id": job_id, "action": "blip"}, task_id="t-blip")
    finally:
        app.conf.task_always_eager = False
    assert [a for a, _ in ran] == ["blip", "blip", "blip"]
    job = _job_row(job_id)
    assert (job.status, job.error) == ("succeeded", None)
