"""``/v1/webhooks``, ``/v1/webhook-deliveries`` and ``/v1/webhook-secret``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from service.auth.dependencies import AdminDep, SessionDep
from service.config import Settings, get_settings
from service.errors import Conflict, Forbidden, NotFound, error_responses
from service.pagination import Page, PaginationDep
from service.webhooks import service
from service.webhooks.schemas import (
    DeliveryRead,
    DeliveryStatus,
    SigningSecretCreated,
    SigningSecretRead,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
)

router = APIRouter(tags=["webhooks"])
SettingsDep = Annotated[Settings, Depends(get_settings)]
StatusQuery = Annotated[DeliveryStatus | None, Query(description="only deliveries in this state")]


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    responses=error_responses(Conflict, Forbidden),
)
def create_webhook(
    _: AdminDep, body: WebhookCreate, session: SessionDep, settings: SettingsDep
) -> Any:
    """Register a URL for job events of this tenant (an admin key: it receives every member's
    job events, where a job's `callback_url` hears of that job only). The reply holds the
    endpoint's signing
    secret, shown only now: each delivery carries `webhook-id` (the same on every retry),
    `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
    "{id}.{timestamp}.{body}">`, Standard Webhooks). A URL the outbound policy refuses is a
    422 on `body.url`."""
    row, secret = service.create_endpoint(session, body, settings)
    session.commit()
    return WebhookCreated(**WebhookRead.model_validate(row).model_dump(), secret=secret)


@router.get("/webhooks", response_model=Page[WebhookRead])
def list_webhooks(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_endpoints(session, page)


@router.get(
    "/webhooks/{webhook_id}", response_model=WebhookRead, responses=error_responses(NotFound)
)
def get_webhook(webhook_id: str, session: SessionDep) -> Any:
    return service.get_endpoint(session, webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Forbidden),
)
def delete_webhook(_: AdminDep, webhook_id: str, session: SessionDep) -> Response:
    """Delete an endpoint and its delivery log; its pending deliveries are not attempted (an
    admin key)."""
    service.delete_endpoint(session, webhook_id)
    session.commit()
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryRead],
    responses=error_responses(NotFound),
)
def list_webhook_deliveries(
    webhook_id: str, session: SessionDep, page: PaginationDep, status: StatusQuery = None
) -> Any:
    """The endpoint's deliveries, newest first: status, attempts, the last answer's status
    code, error and a bounded excerpt, and when a pending one is next attempted."""
    service.get_endpoint(session, webhook_id)
    return service.list_deliveries(session, page, webhook_id=webhook_id, status=status)


@router.get("/webhook-deliveries", response_model=Page[DeliveryRead])
def list_all_deliveries(
    session: SessionDep,
    page: PaginationDep,
    status: StatusQuery = None,
    job_id: Annotated[str | None, Query(max_length=32, description="one job's events")] = None,
) -> Any:
    """Every delivery of this tenant (endpoints' and jobs' callback_url), newest first."""
    return service.list_deliveries(session, page, job_id=job_id, status=status)


@router.get("/webhook-secret", response_model=SigningSecretRead)
def get_webhook_secret(session: SessionDep) -> Any:
    """Whether the tenant has a callback signing secret, and when it was made (never its
    value)."""
    return service.signing_secret_read(service.signing_secret(session))


@router.post("/webhook-secret", status_code=201, response_model=SigningSecretCreated)
def rotate_webhook_secret(_: AdminDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Create the tenant's callback signing secret, or rotate it (admin only). The value is in
    this reply only. Deliveries to a job's `callback_url` are signed with it; after a rotation
    they also carry a signature with the previous secret for a day
    (`SIFT_WEBHOOK_ROTATION_GRACE_S`), so receivers can switch without losing one."""
    row, secret = service.rotate_signing_secret(session, settings)
    session.commit()
    read = service.signing_secret_read(row)
    return SigningSecretCreated(**read.model_dump(), secret=secret)
