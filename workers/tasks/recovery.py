"""The recovery sweep: no job stays ``running`` (or ``queued``) when nothing runs it.

Every task is written to ``task_deliveries`` before it is sent (``service.queue.enqueue``) and
beats its row while a delivery runs (``workers.tasks.jobs.Heartbeat``). Each worker process
runs :func:`sweep` every ``settings.sweep_interval_s``; it repairs what a dead worker, a lost
broker message or a crash between two stages left behind:

1. a task whose delivery stopped beating for ``heartbeat_stale_s`` (its worker died) is sent
   again under the same id: it resumes from what is stored, and the delivery count bounds how
   often that happens to one task (``max_task_deliveries``);
2. a task sent but not started that the broker no longer holds (Redis drops a message whose
   worker died between popping and recording it, and every queued one when it restarts
   without persistence) is sent again once it is ``heartbeat_stale_s`` old; where the broker
   cannot tell (:func:`service.queue.held_by_broker`), after ``task_lost_s``;
3. a running job with no task in flight and a stale heartbeat (a crash between a stage's last
   task and the next stage's send) gets its current stage's task again; a queued job with no
   task (the API died between its commit and the send) gets its first task;
4. a job whose cancel was asked for and that no live task runs is cancelled.

Several workers may sweep at once: each repair is a compare-and-set on the row it changes, so
exactly one of them sends. Resent tasks are idempotent (content-keyed, finished shards are
skipped), so a message the broker redelivers later as well costs a check, not a recompute. The
embedded default (in-memory broker: every message dies with the process) sweeps once at start
with no grace (:func:`resume_after_restart`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import RedisError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.config import get_settings
from service.db.models import (
    FINISHED_STATUSES,
    Curation,
    Evaluation,
    Job,
    JobStatus,
    ScoreSet,
    Study,
    TaskDelivery,
    Valuation,
)
from service.db.session import SessionLocal
from service.queue import enqueue, held_by_broker, send
from service.webhooks.outbox import record_job_event
from workers.contracts import (
    CURATION_RUN,
    EVALUATION_RUN,
    SCORE_SET_RUN,
    STUDY_RUN,
    TASK_QUEUES,
    VALUATION_FEATURIZE,
    VALUATION_SCORE,
    CurationTask,
    EvaluationTask,
    ScoreSetTask,
    StudyTask,
    ValuationTask,
)
from workers.observability import record_sweep, record_sweep_error

log = logging.getLogger(__name__)

MAX_RESENDS = 20
"""A task resent this often without a delivery that ended fails its job (nothing takes it)."""

SCORING_STAGES = ("queued for scoring", "score")
"""Valuation stages after the hand-over: their task is ``sift.valuation.score``."""


@dataclass
class Repairs:
    """What one sweep did, for logs and tests."""

    resent: list[str]
    restarted: list[str]
    cancelled: list[str]
    failed: list[str]
    webhooks: list[str] = field(default_factory=list)
    """Webhook deliveries due and in nobody's hands, sent again (``workers.tasks.webhooks``)."""

    def __bool__(self) -> bool:
        return bool(self.resent or self.restarted or self.cancelled or self.failed or self.webhooks)


def _now() -> datetime:
    return datetime.now(UTC)


def sweep(
    *,
    stale_s: float | None = None,
    lost_s: float | None = None,
    now: datetime | None = None,
) -> Repairs:
    """One pass over the tasks in flight and the unfinished jobs (see the module docstring)."""
    settings = get_settings()
    now = now or _now()
    stale = now - timedelta(seconds=settings.heartbeat_stale_s if stale_s is None else stale_s)
    lost = now - timedelta(seconds=settings.task_lost_s if lost_s is None else lost_s)
    repairs = Repairs([], [], [], [])
    with SessionLocal() as session:
        tasks = session.scalars(
            select(TaskDelivery).where(
                (
                    (TaskDelivery.deliveries > 0) & (TaskDelivery.heartbeat_at <= stale)
                    | (TaskDelivery.deliveries == 0) & (TaskDelivery.heartbeat_at <= lost)
                )
                | TaskDelivery.heartbeat_at.is_(None)
            )
        ).all()
        for task in [*tasks, *_dropped_by_broker(session, stale, lost, now)]:
            _repair_task(session, task, now, repairs)
        unfinished = (JobStatus.queued.value, JobStatus.running.value)
        jobs = session.scalars(select(Job).where(Job.status.in_(unfinished))).all()
        in_flight: dict[str, list[TaskDelivery]] = {}
        for row in session.scalars(  # one query for every job's tasks, not one per job
            select(TaskDelivery).join(Job).where(Job.status.in_(unfinished))
        ):
            in_flight.setdefault(row.job_id, []).append(row)
        for job in jobs:
            _repair_job(session, job, in_flight.get(job.id, []), now, stale, lost, repairs)
    from workers.tasks.webhooks import resend_due  # the task module registers on celery_app

    repairs.webhooks.extend(resend_due(now=now, redispatch_s=lost_s, lost_s=lost_s))
    if repairs:
        log.warning("recovery sweep: %s", repairs)
    record_sweep(repairs)
    return repairs


_last_broker_check: datetime | None = None


def _dropped_by_broker(
    session: Session, stale: datetime, lost: datetime, now: datetime
) -> list[TaskDelivery]:
    """Tasks sent at least ``heartbeat_stale_s`` ago (time enough for the send after the row's
    commit), not started, and not in the broker: lost, no need to wait ``task_lost_s``. The
    broker is read at most once per ``heartbeat_stale_s`` per process (it reads whole queues)."""
    global _last_broker_check
    if _last_broker_check is not None and _last_broker_check > stale:
        return []
    waiting = [
        task
        for task in session.scalars(
            select(TaskDelivery).where(
                TaskDelivery.deliveries == 0,
                TaskDelivery.heartbeat_at <= stale,
                TaskDelivery.heartbeat_at > lost,  # older ones are resent as lost anyway
            )
        )
        if task.task_name in TASK_QUEUES
    ]
    if not waiting:
        return []
    _last_broker_check = now
    queues = {TASK_QUEUES[t.task_name] for t in waiting}
    try:
        held = held_by_broker({t.task_id for t in waiting}, queues)
    except (OSError, RedisError) as exc:  # the broker is down: sweep the rest
        log.warning("recovery sweep: could not read the broker's queues: %s", exc)
        return []
    if held is None:
        return []
    return [t for t in waiting if t.task_id not in held]


def _repair_task(session: Session, task: TaskDelivery, now: datetime, repairs: Repairs) -> None:
    job = session.get(Job, task.job_id)
    if job is None or job.status in FINISHED_STATUSES:
        if task.deliveries <= get_settings().max_task_deliveries:  # keep a poison's evidence
            session.execute(delete(TaskDelivery).where(TaskDelivery.task_id == task.task_id))
            session.commit()
        return
    if job.cancel_requested:
        return  # the job pass cancels it once no task of it is alive
    if task.payload is None or task.resent >= MAX_RESENDS:
        _fail(
            session,
            job,
            f"task {task.task_name} was lost {task.resent} times (its worker died or the broker "
            "dropped it) and could not be run; nothing is left running this job",
            repairs,
        )
        return
    claimed = session.execute(  # compare-and-set: one sweeper resends
        update(TaskDelivery)
        .where(TaskDelivery.task_id == task.task_id, TaskDelivery.heartbeat_at == task.heartbeat_at)
        .values(heartbeat_at=now, resent=TaskDelivery.resent + 1)
    ).rowcount
    session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=now))
    session.commit()
    if claimed:
        send(task.task_id, task.task_name, task.payload)
        repairs.resent.append(task.task_id)


def _repair_job(
    session: Session,
    job: Job,
    alive: Sequence[TaskDelivery],
    now: datetime,
    stale: datetime,
    lost: datetime,
    repairs: Repairs,
) -> None:
    if job.cancel_requested:
        if not any(_beating(t, stale) for t in alive):
            _cancel(session, job, repairs)
        return
    if alive:
        return  # its tasks are repaired on their own
    last_sign = job.heartbeat_at or job.started_at or job.created_at
    if job.status == JobStatus.running.value and last_sign > stale:
        return
    if job.status == JobStatus.queued.value and job.created_at > lost:
        return
    entry = _entry_task(session, job)
    if entry is None:
        _fail(session, job, "its resource no longer exists; nothing can run this job", repairs)
        return
    unchanged = (
        Job.heartbeat_at.is_(None)
        if job.heartbeat_at is None
        else Job.heartbeat_at == job.heartbeat_at
    )
    claimed = session.execute(  # compare-and-set: one sweeper restarts it
        update(Job).where(Job.id == job.id, unchanged).values(heartbeat_at=now)
    ).rowcount
    session.commit()
    if claimed:
        task_name, payload = entry
        enqueue(task_name, payload, job_id=job.id)
        repairs.restarted.append(job.id)


def _beating(task: TaskDelivery, stale: datetime) -> bool:
    return task.deliveries > 0 and task.heartbeat_at is not None and task.heartbeat_at > stale


def _entry_task(session: Session, job: Job) -> tuple[str, Any] | None:
    """The task that (re)starts ``job`` at its current stage."""
    if job.kind == "valuation":
        valuation_id = session.scalar(select(Valuation.id).where(Valuation.job_id == job.id))
        if valuation_id is None:
            return None
        scoring = (job.stage or "").startswith(SCORING_STAGES)
        return (VALUATION_SCORE if scoring else VALUATION_FEATURIZE), ValuationTask(
            valuation_id=valuation_id
        )
    kinds: dict[str, tuple[Any, str, Any]] = {
        "study": (Study, STUDY_RUN, lambda i: StudyTask(study_id=i)),
        "score_set": (ScoreSet, SCORE_SET_RUN, lambda i: ScoreSetTask(score_set_id=i)),
        "curation": (Curation, CURATION_RUN, lambda i: CurationTask(curation_id=i)),
        "evaluation": (Evaluation, EVALUATION_RUN, lambda i: EvaluationTask(evaluation_id=i)),
    }
    if job.kind not in kinds:
        return None
    table, task_name, payload = kinds[job.kind]
    resource_id = session.scalar(select(table.id).where(table.job_id == job.id))
    return None if resource_id is None else (task_name, payload(resource_id))


def _cancel(session: Session, job: Job, repairs: Repairs) -> None:
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_((JobStatus.queued.value, JobStatus.running.value)))
        .values(status=JobStatus.cancelled.value, finished_at=_now())
    ).rowcount
    if moved:  # its webhook events commit with it (service.webhooks.outbox)
        record_job_event(session, job, JobStatus.cancelled.value)
    session.execute(delete(TaskDelivery).where(TaskDelivery.job_id == job.id))
    session.commit()
    if moved:
        repairs.cancelled.append(job.id)


def _fail(session: Session, job: Job, message: str, repairs: Repairs) -> None:
    moved = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_((JobStatus.queued.value, JobStatus.running.value)))
        .values(status=JobStatus.failed.value, error=message, finished_at=_now())
    ).rowcount
    if moved:
        record_job_event(session, job, JobStatus.failed.value, error=message)
    session.commit()
    if moved:
        repairs.failed.append(job.id)


def resume_after_restart() -> Repairs:
    """The embedded default's start: its in-memory broker lost every message with the last
    process, so every unfinished job is resumed (or ended) now, with no grace period."""
    return sweep(stale_s=0, lost_s=0)


_started: Sweeper | None = None
_start_lock = threading.Lock()


def start_sweeper() -> Sweeper:
    """The process's sweeper, started once (worker start-up, or the embedded worker)."""
    global _started
    with _start_lock:
        if _started is None:
            _started = Sweeper().start()
        return _started


class Sweeper:
    """A daemon thread running :func:`sweep` every ``settings.sweep_interval_s``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sift-recovery", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        interval = get_settings().sweep_interval_s
        while not self._stop.wait(interval):
            try:
                sweep()
            except Exception:  # noqa: BLE001 - the database may be down; sweep again later
                record_sweep_error()
                log.warning("recovery sweep failed; next try in %.0f s", interval, exc_info=True)


__all__: Sequence[str] = ("Repairs", "Sweeper", "resume_after_restart", "start_sweeper", "sweep")
