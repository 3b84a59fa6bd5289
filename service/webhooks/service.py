"""Webhook endpoints, the callback signing secret, callbacks and the delivery log. No
commits here; the session is the tenant's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import secrets
from service.config import Settings
from service.db.base import utcnow
from service.db.models import (
    JobCallback,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSigningSecret,
)
from service.errors import Conflict, InvalidInput, NotFound
from service.pagination import Page, Pagination, newest_first
from service.webhooks import signing
from service.webhooks.schemas import DeliveryRead, SigningSecretRead, WebhookCreate, WebhookRead
from workers.outbound import OutboundRefused, check_url

MAX_ENDPOINTS = 100
"""Endpoints per tenant."""


def check_destination(url: str, settings: Settings, field: str) -> None:
    """422 naming ``field`` unless the outbound guard allows ``url`` (the worker checks again,
    at connect time, against the address it dials)."""
    try:
        check_url(url, settings.outbound_policy())
    except OutboundRefused as exc:
        raise InvalidInput(f"URL refused by the outbound policy: {exc}", field=field) from exc


# --- endpoints ---------------------------------------------------------------------------------


def create_endpoint(
    session: Session, body: WebhookCreate, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its secret (returned once; stored sealed)."""
    check_destination(body.url, settings, "body.url")
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint)) or 0
    if count >= MAX_ENDPOINTS:
        raise Conflict(f"a tenant has at most {MAX_ENDPOINTS} webhooks; delete one first")
    secret = signing.new_secret()
    row = WebhookEndpoint(
        url=body.url,
        event_types=sorted(set(body.event_types)),
        description=body.description,
        secret_ciphertext=secrets.seal(secret, settings),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, secret


def get_endpoint(session: Session, webhook_id: str) -> WebhookEndpoint:
    row = session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id))
    if row is None:
        raise NotFound(f"webhook {webhook_id} not found", field="webhook_id")
    return row


def list_endpoints(session: Session, page: Pagination) -> Page[WebhookRead]:
    rows, total = newest_first(session, WebhookEndpoint, page)
    return Page(
        items=[WebhookRead.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


def delete_endpoint(session: Session, webhook_id: str) -> None:
    """The endpoint and its deliveries: pending ones are not attempted any more."""
    row = get_endpoint(session, webhook_id)
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == row.id)
    ):
        session.delete(delivery)
    session.delete(row)
    session.flush()


# --- the tenant's callback signing secret ----------------------------------------------------


def signing_secret(session: Session) -> WebhookSigningSecret | None:
    return session.scalar(select(WebhookSigningSecret))


def rotate_signing_secret(session: Session, settings: Settings) -> tuple[WebhookSigningSecret, str]:
    """Create the tenant's callback secret, or replace it: the previous one keeps signing
    (a second signature) for ``SIFT_WEBHOOK_ROTATION_GRACE_S``. The new value, once."""
    value = signing.new_secret()
    sealed = secrets.seal(value, settings)
    now = utcnow()
    row = signing_secret(session)
    if row is None:
        row = WebhookSigningSecret(ciphertext=sealed, created_at=now)
        session.add(row)
    else:
        row.previous_ciphertext = row.ciphertext
        row.previous_until = now + timedelta(seconds=settings.webhook_rotation_grace_s)
        row.ciphertext = sealed
        row.rotated_at = now
    session.flush()
    return row, value


def signing_secret_read(row: WebhookSigningSecret | None) -> SigningSecretRead:
    if row is None:
        return SigningSecretRead(
            exists=False, created_at=None, rotated_at=None, previous_valid_until=None
        )
    until = row.previous_until
    return SigningSecretRead(
        exists=True,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        previous_valid_until=until if until is not None and until > utcnow() else None,
    )


# --- callbacks of job-creating requests --------------------------------------------------------


def attach_callback(session: Session, job_id: str, url: str | None, settings: Settings) -> None:
    """Tell ``url`` when the job finishes (422 on ``body.callback_url`` when the guard refuses
    it or the tenant has no signing secret yet)."""
    if url is None:
        return
    check_destination(url, settings, "body.callback_url")
    if signing_secret(session) is None:
        raise InvalidInput(
            "callback deliveries are signed with the tenant's webhook secret, and there is "
            "none yet: create it with POST /v1/webhook-secret (an admin key; it is shown once)",
            field="body.callback_url",
        )
    session.add(JobCallback(job_id=job_id, url=url))
    session.flush()


# --- the delivery log --------------------------------------------------------------------------


def list_deliveries(
    session: Session,
    page: Pagination,
    *,
    webhook_id: str | None = None,
    job_id: str | None = None,
    status: str | None = None,
) -> Page[DeliveryRead]:
    query: Any = select(WebhookDelivery, WebhookEvent).join(
        WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id
    )
    if webhook_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == webhook_id)
    if job_id is not None:
        query = query.where(WebhookEvent.job_id == job_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows: Sequence[Any] = session.execute(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    now = datetime.now(UTC)
    items = [_delivery_read(d, e, now) for d, e in rows]
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


def _delivery_read(d: WebhookDelivery, e: WebhookEvent, now: datetime) -> DeliveryRead:
    return DeliveryRead(
        id=d.id,
        event_id=e.id,
        event_type=e.type,
        job_id=e.job_id,
        webhook_id=d.endpoint_id,
        destination="webhook" if d.endpoint_id else "callback_url",
        url=d.url,
        status=d.status,  # type: ignore[arg-type]
        attempts=d.attempts,
        in_flight=d.lease_until is not None and d.lease_until > now,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        response_excerpt=None,  # a receiver's answer is never shown (nor stored now)
        created_at=d.created_at,
        finished_at=d.finished_at,
    )
