"""Who may call: ``Authorization: Bearer <key>`` on every ``/v1`` route.

:func:`get_principal` runs once per request (a router dependency of ``/v1``): a missing,
unknown or revoked key is a 401, a read_only key that tries to write is a 403. Endpoints then
take :data:`SessionDep` (the request session, scoped to the key's tenant by
``service.tenancy``) and :data:`BlobStoreDep` (the tenant's part of the blob store), so a
route cannot reach another tenant's rows or blobs, and another tenant's resource is a 404.

They are ``async def``: FastAPI runs a plain ``def`` dependency in a thread, a hop that costs
more than what these do. The one with I/O, the key lookup, takes a thread only when the key
is not in the :class:`~service.auth.keys.KeyCache`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.auth.keys import KeyCache, Principal, authenticate, well_formed
from service.blobs import BlobStore, TenantBlobStore, get_blob_store
from service.config import app_settings
from service.db.session import READ_METHODS, get_db
from service.errors import Forbidden, Unauthorized

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer sift_...` (`sift keys create`, or "
    "`POST /v1/keys` with an admin key).",
)


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[Session, Depends(get_db)],
) -> Principal:
    """The caller, from its key: on the event loop when this process verified the key lately
    (:class:`~service.auth.keys.KeyCache`), else read in a thread on the request's session."""
    if credentials is None:
        raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
    principal = await principal_of_key(request, session, credentials.credentials)
    if principal.role == "read_only" and request.method not in READ_METHODS:
        raise Forbidden("this API key is read_only: it may only read")
    request.state.principal = principal
    return principal


async def principal_of_key(
    request: Request,
    session: Session,
    key: str,
    refuse: Callable[[str], Exception] = Unauthorized,
) -> Principal:
    """The principal of ``key``, from the app's key cache or (in a thread) the database;
    ``refuse(message)`` is raised for a malformed, unknown or revoked key."""
    if not well_formed(key):
        raise refuse("the API key is unknown or revoked")
    cache = key_cache(request.app)
    principal = cache.get(key)
    if principal is None:
        generation = cache.generation()
        principal = await run_in_threadpool(_look_up, session, key)
        if principal is None:
            raise refuse("the API key is unknown or revoked")
        cache.put(key, principal, generation)
    return principal


def _look_up(session: Session, key: str) -> Principal | None:
    principal = authenticate(session, key)
    # End the lookup's transaction: a writing request's IMMEDIATE transaction (SQLite's one
    # write lock) then starts at the endpoint's first statement, not while an upload streams in.
    session.commit()
    return principal


def key_cache(app: FastAPI) -> KeyCache:
    """The app's cache of verified keys (made on first use, with the app's settings)."""
    cache: KeyCache | None = getattr(app.state, "key_cache", None)
    if cache is None:
        cache = app.state.key_cache = KeyCache(app_settings(app).api_key_cache_s)
    return cache


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if principal.role != "admin":
        raise Forbidden(
            "managing API keys, secrets and webhook endpoints needs an admin key; "
            f"this key is {principal.role}"
        )
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


async def get_tenant_session(
    principal: PrincipalDep, session: Annotated[Session, Depends(get_db)]
) -> Session:
    """The request session, acting for the key's tenant."""
    if session.info.get("tenant_id") not in (None, principal.tenant_id):
        session.expunge_all()  # a session reused across tenants (tests) holds no foreign rows
    session.info["tenant_id"] = principal.tenant_id
    return session


SessionDep = Annotated[Session, Depends(get_tenant_session)]


async def get_tenant_blobs(
    principal: PrincipalDep, store: Annotated[BlobStore, Depends(get_blob_store)]
) -> BlobStore:
    return TenantBlobStore(store, principal.tenant_id)


BlobStoreDep = Annotated[BlobStore, Depends(get_tenant_blobs)]
