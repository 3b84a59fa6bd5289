"""The task queue boundary: the API sends tasks to the workers *by name*.

``celery_app`` is the one Celery application. The worker module (``workers``) does
``from service.queue import celery_app`` and registers its tasks on it; this module never
imports a task, so the API process never imports the heavy worker code.

Endpoints reach the queue through :data:`QueueDep`; tests override :func:`get_queue` with a
recorder -- the only mock in the service tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Protocol

import redis
from celery import Celery
from fastapi import Depends
from pydantic import BaseModel

from service.config import get_settings
from workers import contracts


def _make_celery_app(broker_url: str, visibility_timeout_s: int = 3600) -> Celery:
    app = Celery("sift", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={name: {"queue": queue} for name, queue in contracts.TASK_QUEUES.items()},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        # acks_late + this: a task whose worker was killed goes back to the queue and resumes.
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
    )
    return app


celery_app = _make_celery_app(get_settings().broker_url, get_settings().broker_visibility_timeout_s)


def enqueue(task_name: str, payload: BaseModel, *, job_id: str) -> str:
    """Send ``task_name`` with ``payload`` as keyword arguments to the task's queue; its id.

    The task is written to ``task_deliveries`` (committed) before the message goes out, so a
    message the broker or a worker loses is sent again by the recovery sweep
    (``workers.tasks.recovery``) instead of leaving its job waiting for ever.
    """
    if task_name not in contracts.TASK_QUEUES:
        raise ValueError(f"unknown task {task_name!r}; known: {sorted(contracts.TASK_QUEUES)}")
    kwargs = payload.model_dump(mode="json")
    task_id = uuid.uuid4().hex
    track_task(task_id, job_id, task_name, kwargs)
    send(task_id, task_name, kwargs)
    return task_id


def track_task(task_id: str, job_id: str, task_name: str, kwargs: dict[str, Any]) -> None:
    from service.db.base import utcnow
    from service.db.models import TaskDelivery
    from service.db.session import session_scope

    with session_scope() as session:
        session.add(
            TaskDelivery(
                task_id=task_id,
                job_id=job_id,
                task_name=task_name,
                payload=kwargs,
                deliveries=0,
                enqueued_at=utcnow(),
                heartbeat_at=utcnow(),
                resent=0,
            )
        )


def send(task_id: str, task_name: str, kwargs: dict[str, Any]) -> None:
    """Publish one message (a first send, or the recovery sweep's resend under the same id)."""
    celery_app.send_task(
        task_name, kwargs=kwargs, task_id=task_id, queue=contracts.TASK_QUEUES[task_name]
    )


BROKER_SCAN_LIMIT = 50_000
"""Messages past which :func:`held_by_broker` does not read the queues (it answers ``None``):
one MULTI reads them all, and Redis serves nothing else meanwhile."""

BROKER_SCAN_TIMEOUT_S = 5.0
"""Connect and read timeout of that read: a broker that hangs must not stop the sweep."""


def is_redis_url(url: str) -> bool:
    """One Redis (not ``memory://``, not a ``;``-separated failover list)."""
    return url.startswith(("redis://", "rediss://", "unix://")) and ";" not in url


@lru_cache(maxsize=8)
def redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A plain client of the broker (keys as written) whose calls give up after ``timeout_s``."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


@dataclass(frozen=True)
class RedisLayout:
    """Where kombu's Redis transport keeps Celery's messages: a queue's lists (one per
    priority step, ``<queue><sep><step>`` beside ``<queue>``) and the hash of messages taken
    by a worker and not acknowledged yet, each under ``global_keyprefix``."""

    prefix: str
    sep: str
    steps: tuple[int, ...]
    unacked_name: str

    @classmethod
    def of(cls, app: Celery | None = None) -> RedisLayout:
        """The layout ``app``'s transport options give (kombu's defaults where unset)."""
        from kombu.transport.redis import Channel

        options = (app or celery_app).conf.broker_transport_options or {}
        return cls(
            prefix=options.get("global_keyprefix", Channel.global_keyprefix) or "",
            sep=options.get("sep", Channel.sep),
            steps=tuple(options.get("priority_steps", Channel.priority_steps)),
            unacked_name=options.get("unacked_key", Channel.unacked_key),
        )

    def lists(self, queue: str) -> list[str]:
        return [self.prefix + (f"{queue}{self.sep}{p}" if p else queue) for p in self.steps]

    @property
    def unacked(self) -> str:
        return self.prefix + self.unacked_name


def held_by_broker(
    task_ids: Collection[str], queues: Collection[str], app: Celery | None = None
) -> set[str] | None:
    """Which of ``task_ids`` the broker still holds: waiting in one of ``queues`` or taken by
    a worker and not acknowledged yet. ``None`` when the transport cannot tell (anything but
    one Redis, or queues longer than :data:`BROKER_SCAN_LIMIT`).

    Why: Redis loses a message for good when a worker pops it (BRPOP) and dies before recording
    it as unacknowledged, and every queued message when it restarts without persistence; the
    recovery sweep asks this instead of waiting ``task_lost_s`` to call an unstarted task lost.
    One transaction reads every queue (all priority levels) and the unacknowledged set, so a
    message moving from one to the other in between is not missed.
    """
    app = app or celery_app
    url = str(app.conf.broker_url or "")
    if not is_redis_url(url):
        return None
    wanted = set(task_ids)
    if not wanted:
        return set()
    layout = RedisLayout.of(app)
    lists = sorted({name for queue in queues for name in layout.lists(queue)})
    client = redis_client(url, BROKER_SCAN_TIMEOUT_S)
    with client.pipeline(transaction=False) as sizes:
        for name in lists:
            sizes.llen(name)
        sizes.hlen(layout.unacked)
        if sum(sizes.execute()) > BROKER_SCAN_LIMIT:
            return None
    with client.pipeline(transaction=True) as snapshot:  # MULTI/EXEC: one instant
        for name in lists:
            snapshot.lrange(name, 0, -1)
        snapshot.hvals(layout.unacked)
        *queued, reserved = snapshot.execute()
    held = {_task_id(raw) for messages in queued for raw in messages}
    held |= {_task_id(raw, reserved=True) for raw in reserved}
    return wanted & held


def _task_id(raw: bytes, reserved: bool = False) -> str | None:
    """A Celery message's own task id (headers ``id``; ``parent_id`` names its sender). An
    unacknowledged entry is ``[message, exchange, routing key]``. Anything else: None."""
    try:
        message = json.loads(raw)
        if reserved:
            message = message[0]
        task_id = message["headers"]["id"]
    except (ValueError, TypeError, LookupError):  # not a Celery message: holds no task of ours
        return None
    return None if task_id is None else str(task_id)


def ping_broker(app: Celery | None = None, timeout_s: float = 3.0) -> None:
    """Raise if the broker cannot be reached (``memory://`` always can)."""
    with (app or celery_app).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)


class TaskQueue(Protocol):
    def enqueue(self, task_name: str, payload: BaseModel, *, job_id: str) -> None: ...

    def ping(self) -> None: ...


class CeleryQueue:
    """The real queue: Celery ``send_task`` by name."""

    def enqueue(self, task_name: str, payload: BaseModel, *, job_id: str) -> None:
        enqueue(task_name, payload, job_id=job_id)

    def ping(self) -> None:
        ping_broker()


def get_queue() -> TaskQueue:
    return CeleryQueue()


QueueDep = Annotated[TaskQueue, Depends(get_queue)]
