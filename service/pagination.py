"""``?limit=&offset=`` paging shared by every list endpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.interfaces import ORMOption

from service.config import app_settings
from service.errors import InvalidInput
from workers.contracts import JSON_INT_MAX

T = TypeVar("T")
DEFAULT_LIMIT = 100
LIMIT_DESCRIPTION = f"page size; default {DEFAULT_LIMIT}, at most SIFT_PAGE_SIZE_MAX"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int


async def get_pagination(
    request: Request,
    limit: Annotated[int | None, Query(ge=1, description=LIMIT_DESCRIPTION)] = None,
    # A database's OFFSET is a 64-bit integer; beyond it the driver overflows (a 500).
    offset: Annotated[int, Query(ge=0, le=JSON_INT_MAX)] = 0,
) -> Pagination:
    """Async, with the app's settings read directly: a ``def`` dependency (and
    ``Depends(get_settings)``) would cost every list request a thread hop."""
    settings = app_settings(request.app)
    if limit is None:
        limit = min(DEFAULT_LIMIT, settings.page_size_max)
    if limit > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}", field="query.limit")
    return Pagination(limit=limit, offset=offset)


PaginationDep = Annotated[Pagination, Depends(get_pagination)]


def document_page_size(openapi: dict[str, Any], page_size_max: int) -> None:
    """Write this deployment's SIFT_PAGE_SIZE_MAX into every ``limit`` parameter of the OpenAPI
    document as its ``maximum`` (a setting, so no route can declare it)."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("description") != LIMIT_DESCRIPTION:
                    continue
                schema = parameter.get("schema", {})
                for branch in schema.get("anyOf", [schema]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = page_size_max


R = TypeVar("R")


def newest_first(
    session: Session, table: type[R], page: Pagination, *options: ORMOption
) -> tuple[Sequence[R], int]:
    """One page of a table's rows, newest first, and the table's row count.

    ``id`` breaks ties in ``created_at`` so consecutive pages never overlap or skip a row.
    """
    mapped: Any = table
    total = session.scalar(select(func.count()).select_from(mapped)) or 0
    rows = session.scalars(
        select(mapped)
        .options(*options)
        .order_by(mapped.created_at.desc(), mapped.id)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    return rows, total
