"""Row-level tenancy: every query of a tenant's session sees only that tenant's rows.

Each resource table carries ``tenant_id`` (the :class:`TenantOwned` mixin). Which tenant a
session acts for is set once, at its boundary:

* the API's request session, by the authenticated key (``service.auth``), in
  ``session.info["tenant_id"]``;
* a worker task, by the job it runs (``workers.tasks.jobs.run_tracked``), in the
  :data:`current_tenant` context variable, for every session the task opens.

Two ORM events then do the rest, so a query written later cannot forget the filter:

* ``do_orm_execute`` adds ``tenant_id = :tenant`` (``with_loader_criteria``) to every ORM
  SELECT, UPDATE and DELETE of a tenant-owned table, joins and relationship loads included;
* ``before_flush`` stamps new rows with the tenant and refuses a row of another tenant.

Core ``insert(...)`` with a list of dicts bypasses the ORM: its callers add ``tenant_id``
themselves (:func:`session_tenant`), and the column's NOT NULL catches an omission. A session
with no tenant (key lookup, the CLI, a worker before it knows its job) is unfiltered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from sqlalchemy import ForeignKey, String, event
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)

DEFAULT_TENANT_ID = "default"
"""Owner of the rows that existed before tenancy (migration 0008); its blobs keep their keys."""

current_tenant: ContextVar[str | None] = ContextVar("sift_current_tenant", default=None)


class TenantOwned:
    """Mixin for every table whose rows belong to a tenant."""

    @declared_attr
    def tenant_id(cls) -> Mapped[str]:  # noqa: N805 - declared_attr takes the class
        return mapped_column(String(32), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class CrossTenant(PermissionError):
    """A session tried to write a row that belongs to another tenant (a bug, never input)."""


def session_tenant(session: Session) -> str | None:
    """The tenant a session acts for: set on the session (API) or by the running task."""
    tenant = session.info.get("tenant_id")
    return tenant if tenant is not None else current_tenant.get()


@contextlib.contextmanager
def tenant_scope(tenant_id: str) -> Iterator[None]:
    """Every session opened inside the block acts for ``tenant_id`` (worker tasks)."""
    token = current_tenant.set(tenant_id)
    try:
        yield
    finally:
        current_tenant.reset(token)


@event.listens_for(Session, "do_orm_execute")
def _filter_by_tenant(state: ORMExecuteState) -> None:
    tenant = session_tenant(state.session)
    if tenant is None or state.is_column_load or state.is_relationship_load:
        # relationship and column loads inherit the criteria of the statement that loaded
        # the parent (``propagate_to_loaders``)
        return
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(
            with_loader_criteria(
                TenantOwned,
                lambda cls: cls.tenant_id == tenant,
                include_aliases=True,
            )
        )


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, _context: Any, _instances: Any) -> None:
    tenant = session_tenant(session)
    for obj in session.new:
        if not isinstance(obj, TenantOwned):
            continue
        if obj.tenant_id is None:
            obj.tenant_id = tenant  # type: ignore[assignment]
        elif tenant is not None and obj.tenant_id != tenant:
            raise CrossTenant(
                f"{type(obj).__name__} of tenant {obj.tenant_id} written by a session of "
                f"tenant {tenant}"
            )
    if tenant is None:
        return
    for obj in session.dirty:
        if isinstance(obj, TenantOwned) and obj.tenant_id != tenant:
            raise CrossTenant(f"{type(obj).__name__} of tenant {obj.tenant_id} changed by {tenant}")
