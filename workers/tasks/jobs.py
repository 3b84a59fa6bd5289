"""Job status bookkeeping for tasks: each update commits in its own short session, so progress
is visible to the API while the task runs and survives a worker that dies mid-job."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import case, update

from service.db.models import Job
from service.db.session import SessionLocal
from workers.engine.errors import Cancelled, EngineError

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class JobTracker:
    """Moves one job row through queued → running → succeeded | failed | cancelled."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._stage: str | None = None
        self._stage_started = time.monotonic()

    def _update(self, **fields: object) -> Job:
        with SessionLocal() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                raise LookupError(f"job {self.job_id} does not exist")
            for name, value in fields.items():
                setattr(job, name, value)
            session.commit()
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
            session.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(
                    progress_done=case((done > Job.progress_total, Job.progress_total), else_=done)
                )
            )
            session.commit()

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


def run_tracked(
    job: JobTracker, body: Callable[[], None], *, already_running: bool = False
) -> None:
    """The envelope of every task: skip finished jobs, honour cancellation, turn errors into
    job status (an ``EngineError`` is the user's problem and says so; anything else is ours).

    ``already_running``: a task inside a running job (a shard) does not start the job, and
    does nothing for a job that is not running (failed, cancelled or finished meanwhile).
    """
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
        body()
    except Cancelled:
        job.cancel()
    except EngineError as exc:
        job.fail(str(exc))
    except Exception as exc:
        job.fail(f"internal error: {type(exc).__name__}: {exc}")
        raise
