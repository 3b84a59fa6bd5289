"""API-key management (admin keys only) and ``/v1/me``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.auth import keys
from service.auth.dependencies import AdminDep, PrincipalDep, SessionDep, key_cache
from service.db.models import Tenant
from service.errors import Conflict, NotFound, error_responses

router = APIRouter(tags=["keys"])

Role = Literal["admin", "member", "read_only"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"name": "ci", "role": "member"}]},
    )

    name: str = Field(min_length=1, max_length=200)
    role: Role = "member"


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    role: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="the API key itself: shown this once, stored only hashed")


class Me(BaseModel):
    tenant_id: str
    tenant_name: str
    key_id: str
    role: str


@router.get("/me", response_model=Me)
def me(principal: PrincipalDep, session: SessionDep) -> Any:
    """The calling key's tenant and role."""
    tenant = session.get(Tenant, principal.tenant_id)
    return Me(
        tenant_id=principal.tenant_id,
        tenant_name=tenant.name if tenant else principal.tenant_id,
        key_id=principal.key_id,
        role=principal.role,
    )


@router.post(
    "/keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=error_responses(),
)
def create_key(body: ApiKeyCreate, admin: AdminDep, session: SessionDep) -> Any:
    """A new key of the caller's tenant; the response holds the key, shown only this once."""
    row, key = keys.create_key(session, admin.tenant_id, name=body.name, role=body.role)
    session.commit()
    return ApiKeyCreated(**ApiKeyRead.model_validate(row).model_dump(), key=key)


@router.get("/keys", response_model=list[ApiKeyRead])
def list_keys(admin: AdminDep, session: SessionDep) -> Any:
    """The tenant's keys, revoked ones included (never the keys themselves)."""
    return keys.list_keys(session, admin.tenant_id)


@router.delete(
    "/keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def revoke_key(key_id: str, admin: AdminDep, session: SessionDep, request: Request) -> Response:
    """Revoke a key of the tenant: this process refuses it (401) from the next request on,
    other API processes within `SIFT_API_KEY_CACHE_S` (5 s by default)."""
    keys.revoke_key(session, key_id, admin.tenant_id)
    session.commit()
    key_cache(request.app).forget(key_id)
    return Response(status_code=204)
