"""Request and response bodies of the webhook routes, and the ``callback_url`` field that
every job-creating request takes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["job.started", "job.succeeded", "job.failed", "job.cancelled"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]

URL_PATTERN = r"^https?://"
URL_MAX = 2000


def callback_url_field() -> Any:
    """``callback_url`` of a job-creating request (valuations, studies, score sets,
    curations, evaluations)."""
    return Field(
        None,
        pattern=URL_PATTERN,
        max_length=URL_MAX,
        description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the "
        "job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST "
        "/v1/webhook-secret, which must exist); a public https URL unless the operator "
        "allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
    )


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/sift",
                    "event_types": ["job.succeeded", "job.failed"],
                    "description": "pipeline trigger",
                }
            ]
        },
    )

    url: str = Field(
        pattern=URL_PATTERN,
        max_length=URL_MAX,
        description="where events are POSTed; a public https URL unless the operator "
        "allowlists the host (SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
    )
    event_types: list[EventType] = Field(min_length=1, max_length=4)
    description: str | None = Field(None, max_length=200)


class WebhookRead(BaseModel):
    """A registered endpoint; its secret is never shown again after creation."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    event_types: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="whsec_<base64>: verify each delivery's webhook-signature with it "
        "(Standard Webhooks); shown only now"
    )


class DeliveryRead(BaseModel):
    """One event to one destination. ``id`` is the ``webhook-id`` header of every attempt
    (the receiver's idempotency key)."""

    id: str
    event_id: str
    event_type: str
    job_id: str
    webhook_id: str | None = Field(description="the endpoint; null for a job's callback_url")
    destination: Literal["webhook", "callback_url"]
    url: str
    status: DeliveryStatus
    attempts: int
    in_flight: bool = Field(description="an attempt holds it now")
    next_attempt_at: datetime | None = Field(description="when a pending delivery is due")
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    response_excerpt: str | None = Field(
        description="always null: no part of a receiver's answer is stored (its status code "
        "and a short error are); kept for compatibility"
    )
    created_at: datetime
    finished_at: datetime | None


class SigningSecretRead(BaseModel):
    """The tenant's callback signing secret, without its value."""

    exists: bool
    created_at: datetime | None = None
    rotated_at: datetime | None = None
    previous_valid_until: datetime | None = Field(
        None,
        description="after a rotation, deliveries carry a second signature with the "
        "previous secret until then",
    )


class SigningSecretCreated(SigningSecretRead):
    secret: str = Field(
        description="whsec_<base64>: verifies the webhook-signature of deliveries to the "
        "callback_url of this tenant's jobs; shown only now"
    )
