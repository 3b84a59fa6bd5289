"""The outbox: a job's status change and the webhook events it causes commit together.

Whatever moves a job to running, succeeded, failed or cancelled (the worker's ``JobTracker``,
the API's cancel, the recovery sweep) writes, in the same transaction, one
:class:`WebhookEvent` (the exact body every delivery sends) and one pending
:class:`WebhookDelivery` per destination: each of the tenant's endpoints subscribed to the
event's type, and, for the three terminal events, the job's ``callback_url``. An event with
nowhere to go writes nothing. A change made through the ORM (``job.status = ...`` then a flush)
is caught by a ``before_flush`` listener; the few Core ``UPDATE``s of a job's status call
:func:`record_job_event` themselves. After the commit each new delivery's task is sent
(``sift.webhook.deliver`` on the events queue, ``sift.events``); a send that fails, or a
worker that dies, is made good by the recovery sweep (``workers.tasks.webhooks.resend_due``):
nothing is lost between the status change and the receiver, and a delivery is at least once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from service.db.base import new_id
from service.db.models import (
    Curation,
    Evaluation,
    Job,
    JobCallback,
    ScoreSet,
    Study,
    Valuation,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

log = logging.getLogger(__name__)

STATUS_EVENTS = {
    "running": "job.started",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
"""The events a job's callback_url is told of."""

RESOURCES: dict[str, tuple[Any, str]] = {
    "valuation": (Valuation, "valuations"),
    "study": (Study, "studies"),
    "score_set": (ScoreSet, "score-sets"),
    "curation": (Curation, "curations"),
    "evaluation": (Evaluation, "evaluations"),
}
"""Job kind → (resource table, its path under /v1)."""

ERROR_CHARS = 2000
_PENDING = "sift_webhook_dispatch"
_EMITTED = "sift_webhook_emitted"


def _now() -> datetime:
    return datetime.now(UTC)


def record_job_event(
    session: Session, job: Job | str, status: str, *, error: str | None = None
) -> list[str]:
    """Add the event of ``job`` entering ``status`` and its deliveries to ``session`` (no
    flush, no commit: they go with the caller's transaction); the new delivery ids."""
    event_type = STATUS_EVENTS.get(status)
    if event_type is None:
        return []
    row = session.get(Job, job) if isinstance(job, str) else job
    if row is None:
        return []
    emitted: set[tuple[str, str]] = session.info.setdefault(_EMITTED, set())
    if (row.id, event_type) in emitted:
        return []
    emitted.add((row.id, event_type))
    tenant_id = row.tenant_id
    urls: list[tuple[str | None, str]] = [
        (endpoint.id, endpoint.url)
        for endpoint in session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            # Postgres: FOR KEY SHARE, so an endpoint deleted meanwhile is either not read or
            # waits for this commit (its deliveries go with it): the job's status change never
            # fails on a delivery whose endpoint vanished (SQLite writes one at a time)
            .with_for_update(read=True, key_share=True)
        )
        if event_type in (endpoint.event_types or [])
    ]
    if event_type in TERMINAL_EVENTS:
        callback = session.scalar(
            select(JobCallback).where(
                JobCallback.job_id == row.id, JobCallback.tenant_id == tenant_id
            )
        )
        if callback is not None:
            urls.append((None, callback.url))
    if not urls:
        return []
    now = _now()
    event_row = WebhookEvent(
        id=new_id(),
        tenant_id=tenant_id,
        type=event_type,
        job_id=row.id,
        payload=_payload(session, row, event_type, status, error, now),
        created_at=now,
    )
    session.add(event_row)
    ids = []
    for endpoint_id, url in urls:
        delivery = WebhookDelivery(
            id=new_id(),
            tenant_id=tenant_id,
            event=event_row,
            endpoint_id=endpoint_id,
            url=url,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            dispatched_at=now,  # sent right after the commit (the sweep covers a lost send)
            created_at=now,
        )
        session.add(delivery)
        ids.append(delivery.id)
    session.info.setdefault(_PENDING, []).extend(ids)
    return ids


def _payload(
    session: Session, job: Job, event_type: str, status: str, error: str | None, now: datetime
) -> str:
    resource, path = RESOURCES.get(job.kind, (None, None))
    resource_id = (
        session.scalar(select(resource.id).where(resource.job_id == job.id))
        if resource is not None
        else None
    )
    if error is None and status == "failed":
        error = job.error
    data = {
        "job_id": job.id,
        "kind": job.kind,
        "resource_id": resource_id,
        "resource_url": f"/v1/{path}/{resource_id}" if resource_id else None,
        "status": status,
        "error": (error or "")[:ERROR_CHARS] or None,
    }
    body = {"type": event_type, "timestamp": _iso(now), "data": data}
    return json.dumps(body, separators=(",", ":"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@event.listens_for(Session, "before_flush")
def _job_status_changes(session: Session, _context: Any, _instances: Any) -> None:
    for obj in list(session.dirty):
        if not isinstance(obj, Job):
            continue
        history = inspect(obj).attrs.status.history
        if not history.added or not history.deleted:
            continue  # unchanged, or never loaded (no transition to speak of)
        new, old = history.added[0], history.deleted[0]
        if new != old:
            record_job_event(session, obj, str(new))


def _send(delivery_id: str) -> None:
    from service.queue import send
    from workers.contracts import WEBHOOK_DELIVER

    send(uuid.uuid4().hex, WEBHOOK_DELIVER, {"delivery_id": delivery_id})


dispatch: Callable[[str], None] | None = _send
"""Sends one delivery's task after its commit; tests replace it (None: the sweep sends)."""


@event.listens_for(Session, "after_commit")
def _dispatch_committed(session: Session) -> None:
    session.info.pop(_EMITTED, None)
    ids = session.info.pop(_PENDING, [])
    sender = dispatch
    if sender is None:
        return
    for delivery_id in ids:
        try:
            sender(delivery_id)
        except Exception:  # noqa: BLE001 - the recovery sweep sends it again
            log.warning("could not send webhook delivery %s; the sweep will", delivery_id,
                        exc_info=True)  # fmt: skip


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_EMITTED, None)
    session.info.pop(_PENDING, None)
