"""Tenants and API keys. No commits here: the endpoint or the CLI commits.

A key is ``sift_`` + 43 urlsafe characters (256 random bits). Only its sha256 is stored, so a
database leak gives no usable key; a key that random needs no salt or slow hash. The key is
shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import ROLES, ApiKey, Tenant
from service.errors import Conflict, InvalidInput, NotFound

KEY_PREFIX = "sift_"
SHOWN_PREFIX = 12
"""Characters of a key kept in clear (``sift_`` + 7) to tell keys apart in a list."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant and role."""

    tenant_id: str
    key_id: str
    role: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


MAX_KEY_LENGTH = 200


def well_formed(key: str) -> bool:
    """Could this be a key at all? (Checked before any lookup: a malformed key costs nothing.)"""
    return key.startswith(KEY_PREFIX) and len(key) <= MAX_KEY_LENGTH


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a live key, or None (unknown, malformed or revoked)."""
    if not well_formed(key):
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.secret_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(tenant_id=row.tenant_id, key_id=row.id, role=row.role)


class KeyCache:
    """Keys this process verified lately (by their hash), trusted for ``ttl_s`` seconds.

    Why: reading the key is a database round trip, a transaction and a thread hop on every
    request, most of what a status read costs (docs/benchmarks.md, the API under load). Only
    live keys are kept, at most ``maxsize``: an unknown key is read every time, so made-up keys
    cannot fill the cache or linger in it. Revoking through this process forgets the key at
    once (:meth:`forget`); a revocation elsewhere (the CLI, another API process) is seen when
    the entry expires. ``ttl_s = 0`` reads every request.

    A lookup that was reading the key while it was revoked must not cache what it read: the
    caller takes :meth:`generation` before the lookup and passes it to :meth:`put`, which
    keeps nothing if a :meth:`forget` came in between.
    """

    def __init__(
        self, ttl_s: float, maxsize: int = 10_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: TTLCache[str, Principal] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer) if ttl_s > 0 else None
        )
        self._generation = 0
        self._lock = threading.Lock()  # the event loop reads, a revoking thread forgets

    def get(self, key: str) -> Principal | None:
        if self._entries is None:
            return None
        with self._lock:
            return self._entries.get(hash_key(key))

    def generation(self) -> int:
        with self._lock:
            return self._generation

    def put(self, key: str, principal: Principal, generation: int) -> None:
        """Remember ``key``, read live since :meth:`generation` returned ``generation``."""
        if self._entries is None:
            return
        with self._lock:
            if generation == self._generation:
                self._entries[hash_key(key)] = principal

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._generation += 1
            if self._entries is not None:
                for digest in [d for d, p in self._entries.items() if p.key_id == key_id]:
                    self._entries.pop(digest, None)  # may have expired since the scan


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    if not name or len(name) > 200:
        raise InvalidInput("a tenant name has 1 to 200 characters", field="tenant")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_id: str, *, name: str, role: str) -> tuple[ApiKey, str]:
    """A new key of ``tenant_id``: its row and the key itself (shown once)."""
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} not found", field="tenant")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        tenant_id=tenant_id,
        name=name,
        role=role,
        prefix=key[:SHOWN_PREFIX],
        secret_hash=hash_key(key),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, tenant_id: str | None = None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return session.scalars(query).all()


def revoke_key(session: Session, key_id: str, tenant_id: str | None = None) -> ApiKey:
    """Revoke a key (of ``tenant_id`` when given); revoking twice is a 409."""
    row = session.get(ApiKey, key_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFound(f"API key {key_id} not found", field="key_id")
    if row.revoked_at is not None:
        raise Conflict(f"API key {key_id} was already revoked")
    row.revoked_at = utcnow()
    session.flush()
    return row


def has_any_key(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).limit(1)) is not None
