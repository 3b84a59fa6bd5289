"""Job status bookkeeping for tasks: each update commits in its own short session, so progress
is visible to the API while the task runs and survives a worker that dies mid-job."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import case, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError

from service.config import get_settings
from service.db.models import FINISHED_STATUSES, Job, TaskDelivery
from service.db.session import SessionLocal, for_writes, get_engine
from service.observability import bind_log_fields
from service.tenancy import tenant_scope
from service.webhooks.outbox import record_job_event
from workers.engine.errors import Cancelled, EngineError

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class ResourceDeleted(Exception):
    """The job, or the resource it computes, was deleted while the task ran (``DELETE`` on the
    resource, ``service.deletion``). The task drops its work: it writes no more rows, removes
    the files of that resource it wrote, and the envelope collects the caches it created that
    nothing references (``service.caches``). Never a failure: there is no job to fail."""


class JobTracker:
    """Moves one job row through queued → running → succeeded | failed | cancelled."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.tenant_id: str | None = None
        """Known after the first read; the tenant whose caches a dropped task collects."""
        self._stage: str | None = None
        self._stage_started = time.monotonic()

    def _update(self, **fields: object) -> Job:
        # Read, then write: on SQLite that takes the write lock first (BEGIN IMMEDIATE), or a
        # commit elsewhere in between fails the write at once ("database is locked").
        with SessionLocal(**({"bind": for_writes(get_engine())} if fields else {})) as session:
            job = session.get(Job, self.job_id)
            if job is None:
                raise ResourceDeleted(f"job {self.job_id} was deleted")
            self.tenant_id = job.tenant_id
            for name, value in fields.items():
                setattr(job, name, value)
            try:
                session.commit()
            except StaleDataError:  # deleted between the read and the write
                raise ResourceDeleted(f"job {self.job_id} was deleted") from None
            session.refresh(job)
            session.expunge(job)
            return job

    def read(self) -> Job:
        return self._update()

    def start(self) -> bool:
        """queued → running, atomically; False if the job was cancelled (or finished) meanwhile.

        A re-delivered task finds its job already running and carries on from what is stored.
        """
        with SessionLocal() as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "queued")
                .values(status="running", started_at=_now(), error=None)
            ).rowcount
            if moved:  # job.started webhook events commit with it (service.webhooks.outbox)
                record_job_event(session, self.job_id, "running")
            session.commit()
        return bool(moved) or self.read().status == "running"

    def stage(self, name: str, total: int = 0) -> None:
        """Close the current stage's timing and open the next one."""
        timings = self._close_stage()
        self._stage, self._stage_started = name, time.monotonic()
        self._update(stage=name, progress_done=0, progress_total=total, timings=timings)

    def _close_stage(self) -> dict[str, float]:
        timings = dict(self.read().timings or {})
        if self._stage is not None:
            elapsed = time.monotonic() - self._stage_started
            timings[self._stage] = round(timings.get(self._stage, 0.0) + elapsed, 3)
        return timings

    def advance(self, n: int) -> None:
        """progress_done += n (capped at the total) in one statement: parallel shard tasks
        advancing the same job never lose each other's updates."""
        done = Job.progress_done + n
        with SessionLocal() as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(
                    progress_done=case((done > Job.progress_total, Job.progress_total), else_=done)
                )
            ).rowcount
            session.commit()
        if not moved:
            raise ResourceDeleted(f"job {self.job_id} was deleted")

    def hand_over(self, from_stage: str, to_stage: str) -> bool:
        """Move a running job from ``from_stage`` to ``to_stage`` if nobody did yet.

        Compare-and-set: of several tasks that each find the stage's work finished, exactly
        one gets True and hands the job on (enqueues the next stage).
        """
        if self._stage == from_stage:
            timings = self._close_stage()
        else:  # opened by another process: stages run back to back since the job started
            job = self.read()
            timings = dict(job.timings or {})
            if job.started_at is not None:
                started = job.started_at.replace(tzinfo=job.started_at.tzinfo or UTC)
                elapsed = (_now() - started).total_seconds() - sum(timings.values())
                timings[from_stage] = round(timings.get(from_stage, 0.0) + max(elapsed, 0.0), 3)
        with SessionLocal() as session:
            moved = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running", Job.stage == from_stage)
                .values(stage=to_stage, progress_done=0, progress_total=0, timings=timings)
            ).rowcount
            session.commit()
        self._stage, self._stage_started = to_stage, time.monotonic()
        return bool(moved)

    def note(self, text: str) -> None:
        notes = list(self.read().notes or [])
        if text not in notes:
            self._update(notes=[*notes, text])

    def cancel_requested(self) -> bool:
        return bool(self.read().cancel_requested)

    def succeed(self) -> None:
        self._update(
            status="succeeded", stage="done", timings=self._close_stage(), finished_at=_now()
        )
        self._stage = None

    def fail(self, message: str) -> None:
        self._update(
            status="failed", error=message, timings=self._close_stage(), finished_at=_now()
        )
        self._stage = None

    def cancel(self) -> None:
        self._update(status="cancelled", timings=self._close_stage(), finished_at=_now())
        self._stage = None


# --- deliveries: a task whose execution kills its worker comes back a bounded number of times


_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class Delivery:
    """One delivery of a Celery task, counted in ``task_deliveries`` under the task's id.

    With ``acks_late`` a task whose worker died is delivered again (Redis: after the visibility
    timeout) under the same id, so a record that kills its worker would take each restarted
    worker down, for ever. Each delivery adds one to the count, committed before any work so it
    survives the worker dying at once; a delivery that ends (any outcome, or an exception that
    unwinds the task) deletes the row. The count is thus the deliveries since the last one that
    ended: all but the current one died with their worker. (A Redis message is also redelivered
    when its task outlives the visibility timeout; that timeout must exceed the longest task.)
    """

    def __init__(self, task_id: str, task_name: str, retries: int = 0) -> None:
        self.task_id, self.task_name, self.retries = task_id, task_name, retries

    def arrive(self, job_id: str) -> int:
        """Count this delivery in a transaction of its own; returns the count, this one included."""
        now = _now()
        table = TaskDelivery.__table__
        with SessionLocal() as session:
            dialect = session.get_bind().dialect.name
            if dialect not in _UPSERTS:
                raise RuntimeError(
                    f"task deliveries are counted on {sorted(_UPSERTS)}, not {dialect}"
                )
            insert = _UPSERTS[dialect](table).values(
                task_id=self.task_id,
                job_id=job_id,
                task_name=self.task_name,
                deliveries=1,
                first_delivered_at=now,
                last_delivered_at=now,
                heartbeat_at=now,
                resent=0,
            )
            upsert = insert.on_conflict_do_update(
                index_elements=[table.c.task_id],
                set_={
                    "deliveries": table.c.deliveries + 1,
                    "first_delivered_at": func.coalesce(
                        table.c.first_delivered_at, insert.excluded.first_delivered_at
                    ),
                    "last_delivered_at": insert.excluded.last_delivered_at,
                    "heartbeat_at": insert.excluded.heartbeat_at,
                },
            ).returning(table.c.deliveries)
            try:
                count = session.execute(upsert).scalar_one()
            except IntegrityError:  # the job's row is gone: it was deleted
                session.rollback()
                if session.get(Job, job_id) is None:
                    raise ResourceDeleted(f"job {job_id} was deleted") from None
                raise
            session.commit()
        return int(count)

    def admit(self, job: JobTracker) -> bool:
        """Count this delivery; False when it is one too many: the job is failed (unless it is
        over already) and the task returns, so its message is acknowledged. Celery's own
        retries (after a database or broker outage) are deliveries too, but no deaths."""
        count = self.arrive(job.job_id) - self.retries
        limit = get_settings().max_task_deliveries
        if count > 1:
            log.warning(
                "task %s[%s] of job %s: delivery %d (at most %d); its worker died during the last",
                self.task_name, self.task_id, job.job_id, count, limit,
            )  # fmt: skip
        if count <= limit:
            return True
        state = job.read()
        if state.status in FINISHED_STATUSES:
            log.info("job %s already %s; dropping task %s", job.job_id, state.status, self.task_id)
            return False  # nothing to run; a count that failed the job stays as its evidence
        if state.cancel_requested:
            return True  # the envelope cancels the job
        message = (
            f"task {self.task_name} was delivered {count} times and its worker died during each "
            f"of the first {count - 1} (e.g. a record whose program kills the worker); the job "
            f"is failed so the worker pool stays up (limit: SIFT_MAX_TASK_DELIVERIES={limit})"
        )
        log.error("job %s: %s", job.job_id, message)
        job.fail(message)
        return False  # the row stays, as the evidence; the message is acknowledged

    def end(self) -> None:
        """The delivery ended with its worker alive: it no longer counts against the task."""
        try:
            with SessionLocal() as session:
                session.execute(delete(TaskDelivery).where(TaskDelivery.task_id == self.task_id))
                session.commit()
        except SQLAlchemyError:  # the outcome is recorded already; a stale count is harmless
            log.warning(
                "could not clear the delivery count of task %s", self.task_id, exc_info=True
            )


def run_tracked(
    job: JobTracker,
    body: Callable[[], None],
    *,
    already_running: bool = False,
    task: Task | None = None,
) -> None:
    """The envelope of every task: skip finished jobs, honour cancellation, turn errors into
    job status (an ``EngineError`` is the user's problem and says so; anything else is ours).

    ``already_running``: a task inside a running job (a shard) does not start the job, and
    does nothing for a job that is not running (failed, cancelled or finished meanwhile).

    ``task``: the Celery task being delivered (``bind=True``'s ``self``): its deliveries are
    counted (:class:`Delivery`), and the one after ``max_task_deliveries`` deliveries that each
    died with their worker fails the job without running ``body``.
    """
    bind_log_fields(job_id=job.job_id)  # the task's log records carry it (workers.observability)
    task_id = task.request.id if task is not None else None
    if task is None or task_id is None:  # not delivered by a broker (called directly)
        _envelope(job, body, already_running)
        return
    retries = int(task.request.retries or 0)
    delivery = Delivery(task_id, task.name, retries)
    try:
        if not delivery.admit(job):
            return
        with Heartbeat(task_id, job.job_id):
            _envelope(job, body, already_running)
    except ResourceDeleted as exc:  # before the body ran: nothing of it to clean up
        log.info("task %s[%s]: %s; dropping it", task.name, task_id, exc)
    except TRANSIENT as exc:  # the database, broker or blob store blinked: try again later
        countdown = min(TRANSIENT_BACKOFF_S * 2**retries, TRANSIENT_BACKOFF_CAP_S)
        log.warning(
            "task %s[%s]: %s; retry %d in %.0f s", task.name, task_id, exc, retries + 1, countdown
        )
        raise task.retry(exc=exc, countdown=countdown, max_retries=TRANSIENT_RETRIES) from exc
    delivery.end()


def _envelope(job: JobTracker, body: Callable[[], None], already_running: bool) -> None:
    try:
        _run_body(job, body, already_running)
    except ResourceDeleted as exc:
        log.info("job %s: %s; its task drops its work", job.job_id, exc)
        if job.tenant_id is not None:
            collect_caches(job.tenant_id)


def collect_caches(tenant_id: str) -> None:
    """Collect the tenant's caches nothing references (``service.caches``): what a task whose
    job was deleted created after the delete's own collection. Best effort: logged, not raised
    (a later delete collects what is left)."""
    from service.blobs import TenantBlobStore, blob_store_from_settings
    from service.caches import collect
    from service.deletion import remove_blobs

    try:
        with tenant_scope(tenant_id), SessionLocal(bind=for_writes(get_engine())) as session:
            collected = collect(session)
            session.commit()
        blobs = TenantBlobStore(blob_store_from_settings(get_settings()), tenant_id)
        remove_blobs(blobs, collected.blob_prefixes)
        if collected.blob_prefixes:
            log.info("collected caches nothing references: %s", collected.blob_prefixes)
    except Exception:
        log.warning("could not collect the caches of tenant %s", tenant_id, exc_info=True)


def _run_body(job: JobTracker, body: Callable[[], None], already_running: bool) -> None:
    state = job.read()
    if state.status in ("succeeded", "failed", "cancelled"):
        log.info("job %s already %s; nothing to do", job.job_id, state.status)
        return
    if state.cancel_requested:
        job.cancel()
        return
    if already_running:
        if state.status != "running":
            log.info("job %s is %s; dropping task", job.job_id, state.status)
            return
    elif not job.start():
        log.info("job %s was cancelled before it started", job.job_id)
        return
    try:
        with tenant_scope(state.tenant_id):  # every session the task opens acts for its tenant
            body()
    except Cancelled:
        job.cancel()
    except EngineError as exc:
        job.fail(str(exc))
    except TRANSIENT:
        raise  # not the job's fault: retried (run_tracked), never counted as done or failed
    except Exception as exc:
        job.fail(f"internal error: {type(exc).__name__}: {exc}")
        raise


TRANSIENT: tuple[type[BaseException], ...] = (
    OperationalError,  # the database is down or restarting
    InterfaceError,
    PoolTimeout,
    RedisConnectionError,  # the broker (enqueueing the next stage)
    KombuOperationalError,
    EndpointConnectionError,  # the blob store
    ConnectionClosedError,
)
"""Infrastructure errors a task is retried for (with backoff), never failed for."""
TRANSIENT_BACKOFF_S = 1.0
TRANSIENT_BACKOFF_CAP_S = 30.0
TRANSIENT_RETRIES = 40
"""About 20 minutes of outage before the task gives up; the recovery sweep then resends it."""


class Heartbeat:
    """While a delivery runs, a thread beats its row and its job every
    ``settings.heartbeat_interval_s``; a beat that stops (the worker died) lets the recovery
    sweep (``workers.tasks.recovery``) send the task again after ``heartbeat_stale_s``."""

    def __init__(self, task_id: str, job_id: str) -> None:
        self.task_id, self.job_id = task_id, job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{task_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        interval = get_settings().heartbeat_interval_s
        while not self._stop.wait(interval):
            self.beat()

    def beat(self) -> None:
        now = _now()
        try:
            with SessionLocal() as session:
                session.execute(
                    update(TaskDelivery)
                    .where(TaskDelivery.task_id == self.task_id)
                    .values(heartbeat_at=now)
                )
                session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=now))
                session.commit()
        except SQLAlchemyError as exc:  # a missed beat is retried at the next one
            log.warning("heartbeat of task %s failed: %s", self.task_id, exc)
