"""The job life cycle every job-backed resource shares (valuations, studies, score sets,
curations): create queued, enqueue after commit, lock for cancel, cancel, delete, and the job's
part of the read view. Each resource keeps only what is its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.config import get_settings
from service.db.base import utcnow
from service.db.models import FINISHED_STATUSES, Job, JobStatus, TaskDelivery
from service.errors import Conflict, ServiceUnavailable
from service.queue import TaskQueue
from service.webhooks.outbox import record_job_event

log = logging.getLogger(__name__)

LIVE_STATUSES = frozenset({JobStatus.queued.value, JobStatus.running.value})
"""A *live* job is queued or running: it still reads its inputs and writes its results. A
finished one (succeeded, failed, cancelled) reads nothing any more."""


def new_job(session: Session, kind: str) -> Job:
    """A queued job row, flushed so its id can be referenced."""
    job = Job(
        kind=kind,
        status=JobStatus.queued.value,
        progress_done=0,
        progress_total=0,
        notes=[],
        timings={},
        cancel_requested=False,
    )
    session.add(job)
    session.flush()
    return job


def enqueue_committed(
    session: Session,
    queue: TaskQueue,
    task_name: str,
    payload: BaseModel,
    job: Job,
    *,
    noun: str,
    resource_id: str,
) -> None:
    """Send the task of a resource already committed (so the worker always finds it). If the
    broker refuses, the job is marked failed and committed, and the reply is 503."""
    try:
        queue.enqueue(task_name, payload, job_id=job.id)
    except Exception as e:
        log.exception("enqueue failed for %s %s", noun, resource_id)
        job.status = JobStatus.failed.value
        job.error = f"could not enqueue the {noun}: {type(e).__name__}: {e}"
        job.finished_at = utcnow()
        session.commit()
        raise ServiceUnavailable(
            f"{noun} {resource_id} was created but could not be queued ({e}); its job is "
            "marked failed"
        ) from e


def lock(session: Session, job_id: str) -> None:
    """Lock the job row: a worker picking the job up races with a cancel."""
    session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def cancel(session: Session, job: Job, *, what: str) -> None:
    """A queued job is cancelled at once, a running one when the worker next checks
    ``cancel_requested``; a finished one is a 409. ``what`` names the resource."""
    if job.status in FINISHED_STATUSES:
        raise Conflict(f"{what} has already finished (status {job.status!r})")
    job.cancel_requested = True
    if job.status == JobStatus.queued or not _runs(session, job):
        job.status = JobStatus.cancelled.value
        job.finished_at = utcnow()
    session.flush()


def _runs(session: Session, job: Job) -> bool:
    """Whether a live delivery (heartbeat within ``heartbeat_stale_s``) runs ``job``: a job
    whose worker died is cancelled at once rather than waiting for a worker that never comes."""
    fresh = utcnow() - timedelta(seconds=get_settings().heartbeat_stale_s)
    return (
        session.scalar(
            select(TaskDelivery.task_id)
            .where(
                TaskDelivery.job_id == job.id,
                TaskDelivery.deliveries > 0,
                TaskDelivery.heartbeat_at > fresh,
            )
            .limit(1)
        )
        is not None
    )


def delete_resources(
    session: Session,
    table: Any,
    ids: Sequence[str],
    *,
    parts: Sequence[InstrumentedAttribute[str]] = (),
    blob_prefix: Callable[[str], str] | None = None,
) -> list[str]:
    """Delete job-backed resources of ``table`` with their jobs; the blob prefixes to delete
    once that is committed.

    A live job is cancelled by this: its tasks in flight go first (so nothing sends them
    again), then the job rows are locked (a worker starting the job waits, then finds it gone),
    then the resources' own rows (``parts``: columns naming the resource), the resources and
    the jobs. A worker running the job finds its rows gone at its next update and drops its
    work without writing more (``workers.tasks.jobs.ResourceDeleted``); nothing waits for it.
    A live job's ``job.cancelled`` event (``service.webhooks.outbox``) commits with the
    deletion, so its callback_url and endpoints hear of its end. The locks are taken in the
    order a worker's heartbeat takes them (its task row, then its job), so the two never
    deadlock.
    """
    if not ids:
        return []
    job_ids = list(session.scalars(select(table.job_id).where(table.id.in_(ids))))
    fetch = {"synchronize_session": "fetch"}
    session.execute(delete(TaskDelivery).where(TaskDelivery.job_id.in_(job_ids)))
    jobs = session.scalars(
        select(Job)
        .where(Job.id.in_(job_ids))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for job in jobs:
        if job.status in LIVE_STATUSES:  # events have no foreign key to the job: they stay
            record_job_event(session, job, JobStatus.cancelled.value)
    session.execute(select(table.id).where(table.id.in_(ids)).with_for_update()).all()
    for column in parts:
        session.execute(delete(column.class_).where(column.in_(ids)).execution_options(**fetch))
    session.execute(delete(table).where(table.id.in_(ids)).execution_options(**fetch))
    session.execute(delete(Job).where(Job.id.in_(job_ids)).execution_options(**fetch))
    return [blob_prefix(i) for i in ids] if blob_prefix else []


def job_state(job: Job) -> dict[str, Any]:
    """The job's fields of a resource's read view."""
    return {
        "status": job.status,
        "stage": job.stage,
        "progress": {"done": job.progress_done, "total": job.progress_total},
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "notes": job.notes,
        "timings": job.timings,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
