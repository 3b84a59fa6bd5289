"""Tenant secrets: named values a tenant's outbound calls may use, write-only.

A tenant's admin stores a value (sealed with ``SIFT_SECRET_KEY``), or an operator grants the
tenant a worker environment variable by name (``sift secrets grant``); either way a request
names the *secret*, never a variable, so no request can read an arbitrary worker variable.
Every secret is bound to the hosts it may be sent to: a request that would send it anywhere
else is refused (at the API, and again by the worker before it opens the secret). No commits
here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

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


def _new(session: Session, name: str, tenant_id: str | None, **fields: Any) -> TenantSecret:
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


HOST_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"


def _hosts(hosts: Sequence[str], field: str) -> list[str]:
    cleaned = sorted({h.strip().lower().rstrip(".") for h in hosts})
    if not cleaned or len(cleaned) > 20 or not all(re.match(HOST_PATTERN, h) for h in cleaned):
        raise InvalidInput(
            "name 1 to 20 exact host names the secret may be sent to (e.g. api.openai.com)",
            field=field,
        )
    return cleaned


def store(session: Session, name: str, value: str, hosts: Sequence[str]) -> TenantSecret:
    """The tenant's own secret (the session's tenant), sealed, bound to ``hosts``."""
    return _new(
        session,
        name,
        None,
        source="stored",
        ciphertext=secrets.seal(value),
        hosts=_hosts(hosts, "body.hosts"),
    )


def grant_env(
    session: Session, tenant_id: str, name: str, env_var: str, hosts: Sequence[str]
) -> TenantSecret:
    """Operator only (CLI): let ``tenant_id`` send worker variable ``env_var``, as secret
    ``name``, to ``hosts`` only."""
    if not re.match(ENV_PATTERN, env_var):
        raise InvalidInput("an environment variable name is A-Z, 0-9 and _", field="env")
    return _new(
        session, name, tenant_id, source="worker_env", env_var=env_var, hosts=_hosts(hosts, "host")
    )


def list_secrets(session: Session) -> Sequence[TenantSecret]:
    return session.scalars(select(TenantSecret).order_by(TenantSecret.name)).all()


def delete(session: Session, name: str) -> None:
    row = _find(session, name)
    if row is None:
        raise NotFound(f"secret {name!r} not found", field="name")
    session.delete(row)
    session.flush()


def require(session: Session, name: str, url: str, field: str) -> None:
    """422 unless the session's tenant has a secret ``name`` that may be sent to ``url``'s
    host (checked when a job names it)."""
    row = _find(session, name)
    if row is None:
        raise InvalidInput(
            f"no secret named {name!r}: store it with POST /v1/secrets first", field=field
        )
    if not may_send(row, url):
        raise InvalidInput(
            f"secret {name!r} may only be sent to {', '.join(row.hosts)}, not to this URL's host",
            field=field,
        )


def may_send(row: TenantSecret, url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host in (row.hosts or [])


class SecretMissing(LookupError):
    """The named secret is gone or its worker variable is unset (the job fails with this)."""


def reveal(session: Session, name: str, url: str) -> str:
    """Worker only: the value of the session's tenant's secret ``name``, to send to ``url``."""
    row = _find(session, name)
    if row is None:
        raise SecretMissing(f"the tenant has no secret named {name!r}")
    if not may_send(row, url):
        raise SecretMissing(f"secret {name!r} may not be sent to this URL's host")
    if row.source == "stored":
        return secrets.unseal(row.ciphertext or "")
    value = os.environ.get(row.env_var or "")
    if not value:
        raise SecretMissing(
            f"secret {name!r} is granted from a worker variable that this worker does not have"
        )
    return value
