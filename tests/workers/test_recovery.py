"""The recovery sweep on a migrated database (SQLite here; Postgres too when
``SIFT_TEST_DATABASE_URL`` is set): what a dead worker, a lost message or a crash between two
stages leaves is repaired once, and cancelled jobs with nothing running them end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select

from service.db.models import Job, TaskDelivery
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from tests.workers.conftest import valuation_rows
from workers.contracts import VALUATION_FEATURIZE, VALUATION_SCORE
from workers.tasks import recovery

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=3)


@pytest.fixture(autouse=True)
def database(migrated: str) -> None:
    pass


@pytest.fixture(autouse=True)
def outbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """Messages the sweep sends: resends (``send``) and new tasks (``enqueue``)."""
    sent: list[tuple[str, ...]] = []

    def send(task_id: str, task_name: str, kwargs: dict[str, Any]) -> None:
        sent.append(("resend", task_id, task_name, str(sorted(kwargs.items()))))

    def enqueue(task_name: str, payload: Any, *, job_id: str) -> str:
        sent.append(("enqueue", task_name, job_id, str(payload.model_dump())))
        return "new"

    monkeypatch.setattr(recovery, "send", send)
    monkeypatch.setattr(recovery, "enqueue", enqueue)
    yield sent


class Broker:
    """What ``held_by_broker`` answers: the task ids it holds, or None (it cannot tell)."""

    def __init__(self) -> None:
        self.holds: set[str] | None = None
        self.reads = 0
        self.error: Exception | None = None

    def held_by_broker(self, task_ids: Any, queues: Any) -> set[str] | None:
        self.reads += 1
        if self.error is not None:
            raise self.error
        assert set(queues) <= {"sift.gpu", "sift.cpu"}
        return None if self.holds is None else set(task_ids) & self.holds


@pytest.fixture(autouse=True)
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    fake = Broker()
    monkeypatch.setattr(recovery, "held_by_broker", fake.held_by_broker)
    monkeypatch.setattr(recovery, "_last_broker_check", None)
    return fake


def _job(status: str = "running", **fields: Any) -> str:
    with SessionLocal() as session:
        job = Job(
            kind="score_set",
            tenant_id=DEFAULT_TENANT_ID,
            status=status,
            created_at=LONG_AGO,
            started_at=LONG_AGO if status == "running" else None,
            **fields,
        )
        session.add(job)
        session.commit()
        return job.id


def _task(job_id: str, *, deliveries: int, beat: datetime, resent: int = 0) -> str:
    with SessionLocal() as session:
        row = TaskDelivery(
            task_id=f"t-{job_id}",
            job_id=job_id,
            task_name="sift.score_set.run",
            payload={"score_set_id": "s1"},
            deliveries=deliveries,
            enqueued_at=LONG_AGO,
            last_delivered_at=beat if deliveries else None,
            heartbeat_at=beat,
            resent=resent,
        )
        session.add(row)
        session.commit()
        return row.task_id


def _row(model: Any, key: str) -> Any:
    with SessionLocal() as session:
        return session.get(model, key)


def test_a_task_whose_worker_died_is_sent_again_once(outbox: list[tuple[str, ...]]) -> None:
    job_id = _job()
    task_id = _task(job_id, deliveries=1, beat=NOW - timedelta(seconds=61))
    repairs = recovery.sweep(stale_s=60, lost_s=3600, now=NOW)
    assert repairs.resent == [task_id]
    assert outbox == [("resend", task_id, "sift.score_set.run", "[('score_set_id', 's1')]")]
    row = _row(TaskDelivery, task_id)
    assert row.resent == 1 and row.heartbeat_at == NOW and row.deliveries == 1
    assert not recovery.sweep(stale_s=60, lost_s=3600, now=NOW + timedelta(seconds=30))
    assert len(outbox) == 1  # its new chance has not run out yet


def test_a_beating_task_and_a_young_queued_one_are_left_alone(
    outbox: list[tuple[str, ...]],
) -> None:
    _task(_job(), deliveries=1, beat=NOW - timedelta(seconds=10))
    _task(_job(), deliveries=0, beat=NOW - timedelta(minutes=30))
    assert not recovery.sweep(stale_s=60, lost_s=3600, now=NOW) and outbox == []


def test_a_message_the_broker_lost_is_sent_again(outbox: list[tuple[str, ...]]) -> None:
    task_id = _task(_job(status="queued"), deliveries=0, beat=NOW - timedelta(hours=2))
    assert recovery.sweep(stale_s=60, lost_s=3600, now=NOW).resent == [task_id]


def test_a_message_the_broker_dropped_is_sent_again_without_waiting_an_hour(
    outbox: list[tuple[str, ...]], broker: Broker
) -> None:
    """Redis drops a message whose worker died between its pop and its unacked record: the
    sweep sees it in no queue and resends it after heartbeat_stale_s, not task_lost_s."""
    dropped = _task(_job(), deliveries=0, beat=NOW - timedelta(seconds=61))
    waiting = _task(_job(), deliveries=0, beat=NOW - timedelta(seconds=61))
    _task(_job(), deliveries=0, beat=NOW - timedelta(seconds=30))  # maybe not even sent yet
    broker.holds = {waiting}
    assert recovery.sweep(stale_s=60, lost_s=3600, now=NOW).resent == [dropped]
    assert [entry[1] for entry in outbox] == [dropped]  # not the held one, not the young one
    assert _row(TaskDelivery, dropped).resent == 1


def test_a_broker_that_cannot_tell_leaves_waiting_tasks_to_task_lost_s(
    outbox: list[tuple[str, ...]], broker: Broker
) -> None:
    _task(_job(), deliveries=0, beat=NOW - timedelta(seconds=61))
    assert not recovery.sweep(stale_s=60, lost_s=3600, now=NOW) and broker.reads == 1
    broker.error = redis.ConnectionError("redis is down")
    cancelled = _job(cancel_requested=True)  # the rest of the sweep still runs
    assert recovery.sweep(stale_s=60, lost_s=3600, now=NOW + timedelta(seconds=61)).cancelled == [
        cancelled
    ]
    assert broker.reads == 2 and outbox == []


def test_the_broker_is_read_once_per_stale_interval(broker: Broker) -> None:
    waiting = _task(_job(), deliveries=0, beat=NOW - timedelta(seconds=61))
    broker.holds = {waiting}  # still queued: a candidate at every sweep
    recovery.sweep(stale_s=60, lost_s=3600, now=NOW)
    recovery.sweep(stale_s=60, lost_s=3600, now=NOW + timedelta(seconds=30))
    assert broker.reads == 1
    recovery.sweep(stale_s=60, lost_s=3600, now=NOW + timedelta(seconds=61))
    assert broker.reads == 2


def test_concurrent_sweeps_send_once(outbox: list[tuple[str, ...]]) -> None:
    _task(_job(), deliveries=2, beat=LONG_AGO)
    threads = [
        threading.Thread(target=recovery.sweep, kwargs={"stale_s": 60, "now": NOW})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outbox) == 1


def test_cancel_ends_a_job_that_nothing_runs(outbox: list[tuple[str, ...]]) -> None:
    job_id = _job(cancel_requested=True)
    _task(job_id, deliveries=1, beat=LONG_AGO)
    repairs = recovery.sweep(stale_s=60, now=NOW)
    assert repairs.cancelled == [job_id] and outbox == []
    assert _row(Job, job_id).status == "cancelled"
    with SessionLocal() as session:
        assert session.scalars(select(TaskDelivery)).all() == []
    beating = _job(cancel_requested=True)
    _task(beating, deliveries=1, beat=NOW)  # its worker is alive and will see the request
    assert not recovery.sweep(stale_s=60, now=NOW) and _row(Job, beating).status == "running"


def test_rows_of_finished_jobs_are_cleared(outbox: list[tuple[str, ...]]) -> None:
    task_id = _task(_job(status="succeeded"), deliveries=1, beat=LONG_AGO)
    recovery.sweep(stale_s=60, now=NOW)
    assert _row(TaskDelivery, task_id) is None and outbox == []


def test_a_task_lost_too_often_fails_its_job(outbox: list[tuple[str, ...]]) -> None:
    job_id = _job()
    _task(job_id, deliveries=1, beat=LONG_AGO, resent=recovery.MAX_RESENDS)
    assert recovery.sweep(stale_s=60, now=NOW).failed == [job_id] and outbox == []
    job = _row(Job, job_id)
    assert job.status == "failed" and "lost 20 times" in job.error


def _valuation_job(stage: str) -> tuple[str, str]:
    valuation_id, job_id = valuation_rows(
        "running", stage=stage, created_at=LONG_AGO, started_at=LONG_AGO, heartbeat_at=LONG_AGO
    )
    return job_id, valuation_id


@pytest.mark.parametrize(
    ("stage", "task"),
    [("queued for scoring", VALUATION_SCORE), ("featurize", VALUATION_FEATURIZE)],
)
def test_a_running_job_with_no_task_gets_its_stage_again(
    outbox: list[tuple[str, ...]], stage: str, task: str
) -> None:
    """E.g. a crash between the last shard's hand-over and the send of the scoring task."""
    job_id, valuation_id = _valuation_job(stage)
    assert recovery.sweep(stale_s=60, now=NOW).restarted == [job_id]
    assert outbox == [("enqueue", task, job_id, str({"valuation_id": valuation_id}))]
    assert not recovery.sweep(stale_s=60, now=NOW + timedelta(seconds=5))  # not twice


def test_after_a_restart_everything_unfinished_resumes(outbox: list[tuple[str, ...]]) -> None:
    """The embedded default's in-memory broker lost its messages: no grace period."""
    task_id = _task(_job(), deliveries=1, beat=datetime.now(UTC))
    queued = _task(_job(status="queued"), deliveries=0, beat=datetime.now(UTC))
    assert sorted(recovery.resume_after_restart().resent) == sorted([task_id, queued])
