"""``/v1/secrets``: write-only values for outbound calls (e.g. an assist endpoint's key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth.dependencies import SessionDep
from service.errors import Conflict, NotFound, error_responses
from service.tenant_secrets import service
from service.tenant_secrets.service import NAME_PATTERN

router = APIRouter(prefix="/secrets", tags=["secrets"])


class SecretCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "openai", "value": "sk-..."}]},
    )

    name: str = Field(pattern=NAME_PATTERN)
    value: str = Field(min_length=1, max_length=10_000, description="write-only")


class SecretRead(BaseModel):
    """A secret's name and origin; its value is never returned."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    source: str = Field(description="stored (by the tenant) or worker_env (granted by an operator)")
    created_at: datetime


@router.post("", status_code=201, response_model=SecretRead, responses=error_responses(Conflict))
def create_secret(body: SecretCreate, session: SessionDep) -> Any:
    """Store a secret, sealed with the server's key; name it in requests (for instance
    ``settings.nice.assist_endpoint.api_key_secret``). It can be deleted, never read."""
    row = service.store(session, body.name, body.value)
    session.commit()
    return row


@router.get("", response_model=list[SecretRead])
def list_secrets(session: SessionDep) -> Any:
    return service.list_secrets(session)


@router.delete(
    "/{name}", status_code=204, response_class=Response, responses=error_responses(NotFound)
)
def delete_secret(name: str, session: SessionDep) -> Response:
    service.delete(session, name)
    session.commit()
    return Response(status_code=204)
