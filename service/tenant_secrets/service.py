"""Tenant secrets: named values a tenant's outbound calls may use, write-only.

A tenant stores a value (sealed with ``SIFT_SECRET_KEY``), or an operator grants it a worker
environment variable by name (``sift secrets grant``); either way a request names the
*secret*, never a variable, so no request can read an arbitrary worker variable. No commits
here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import secrets
from service.db.base import utcnow
from service.db.models import TenantSecret
from service.errors import Conflict, InvalidInput, NotFound

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
ENV_PATTERN = r"^[A-Z_][A-Z0-9_]{0,99}$"


def _find(session: Session, name: str, tenant_id: str | None = None) -> TenantSecret | None:
    query = select(TenantSecret).where(TenantSecret.name == name)
    if tenant_id is not None:
        query = query.where(TenantSecret.tenant_id == tenant_id)
    return session.scalar(query)


def _new(session: Session, name: str, tenant_id: str | None, **fields: str | None) -> TenantSecret:
    if not re.match(NAME_PATTERN, name):
        raise InvalidInput(
            "a secret name is 1-100 letters, digits, '_', '.' or '-'", field="body.name"
        )
    if _find(session, name, tenant_id) is not None:
        raise Conflict(f"a secret named {name!r} exists; delete it first to replace it")
    row = TenantSecret(name=name, created_at=utcnow(), **fields)
    if tenant_id is not None:
        row.tenant_id = tenant_id
    session.add(row)
    session.flush()
    return row


def store(session: Session, name: str, value: str) -> TenantSecret:
    """The tenant's own secret (the session's tenant), sealed."""
    return _new(session, name, None, source="stored", ciphertext=secrets.seal(value))


def grant_env(session: Session, tenant_id: str, name: str, env_var: str) -> TenantSecret:
    """Operator only (CLI): let ``tenant_id`` use worker variable ``env_var`` as ``name``."""
    if not re.match(ENV_PATTERN, env_var):
        raise InvalidInput("an environment variable name is A-Z, 0-9 and _", field="env")
    return _new(session, name, tenant_id, source="worker_env", env_var=env_var)


def list_secrets(session: Session) -> Sequence[TenantSecret]:
    return session.scalars(select(TenantSecret).order_by(TenantSecret.name)).all()


def delete(session: Session, name: str) -> None:
    row = _find(session, name)
    if row is None:
        raise NotFound(f"secret {name!r} not found", field="name")
    session.delete(row)
    session.flush()


def require(session: Session, name: str, field: str) -> None:
    """422 unless the session's tenant has a secret ``name`` (checked when a job names it)."""
    if _find(session, name) is None:
        raise InvalidInput(
            f"no secret named {name!r}: store it with POST /v1/secrets first", field=field
        )


class SecretMissing(LookupError):
    """The named secret is gone or its worker variable is unset (the job fails with this)."""


def reveal(session: Session, name: str) -> str:
    """Worker only: the value of the session's tenant's secret ``name``."""
    row = _find(session, name)
    if row is None:
        raise SecretMissing(f"the tenant has no secret named {name!r}")
    if row.source == "stored":
        return secrets.unseal(row.ciphertext or "")
    value = os.environ.get(row.env_var or "")
    if not value:
        raise SecretMissing(
            f"secret {name!r} is granted from a worker variable that this worker does not have"
        )
    return value
