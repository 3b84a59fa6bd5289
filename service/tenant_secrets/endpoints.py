"""``/v1/secrets``: write-only values for outbound calls (e.g. an assist endpoint's key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth.dependencies import AdminDep, SessionDep
from service.errors import Conflict, NotFound, error_responses
from service.tenant_secrets import service
from service.tenant_secrets.service import NAME_PATTERN

router = APIRouter(prefix="/secrets", tags=["secrets"])


class SecretCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "openai", "value": "sk-...", "hosts": ["api.openai.com"]}]
        },
    )

    name: str = Field(pattern=NAME_PATTERN)
    value: str = Field(
        min_length=1,
        max_length=10_000,
        pattern=r"^[\x21-\x7e]+$",
        description="write-only; printable ASCII (it travels in an HTTP header)",
    )
    hosts: list[str] = Field(
        min_length=1,
        max_length=20,
        description="the only hosts it may be sent to (exact names, e.g. api.openai.com)",
    )


class SecretRead(BaseModel):
    """A secret's name and origin; its value is never returned."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    source: str = Field(description="stored (by the tenant) or worker_env (granted by an operator)")
    hosts: list[str] = Field(description="where it may be sent")
    created_at: datetime


@router.post("", status_code=201, response_model=SecretRead, responses=error_responses(Conflict))
def create_secret(body: SecretCreate, _: AdminDep, session: SessionDep) -> Any:
    """Store a secret, sealed with the server's key; name it in requests (for instance
    ``settings.nice.assist_endpoint.api_key_secret``). It can be deleted, never read."""
    row = service.store(session, body.name, body.value, body.hosts)
    session.commit()
    return row


@router.get("", response_model=list[SecretRead])
def list_secrets(session: SessionDep) -> Any:
    return service.list_secrets(session)


@router.delete(
    "/{name}", status_code=204, response_class=Response, responses=error_responses(NotFound)
)
def delete_secret(name: str, _: AdminDep, session: SessionDep) -> Response:
    """Admin only (like creating one): a member must not swap an operator's grant for a value
    of its own."""
    service.delete(session, name)
    session.commit()
    return Response(status_code=204)
