"""Liveness (``/healthz``) and readiness (``/readyz``) probes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from service.blobs import RawBlobStoreDep
from service.db.session import RawSessionDep
from service.queue import QueueDep

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
    failing: list[str]


@router.get("/healthz", response_model=Health)
async def healthz() -> Any:
    """The process is up (no dependency is checked). ``async``: it runs on the event loop and
    needs no worker thread, so it answers even while every request thread waits on the
    database."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a check failed (see `failing`)"}},
)
def readyz(session: RawSessionDep, queue: QueueDep, blobs: RawBlobStoreDep) -> JSONResponse:
    """Database (``SELECT 1``), broker connection and blob store; 503 names what failed."""
    checks: dict[str, str] = {}

    def run(name: str, check: Any) -> None:
        try:
            check()
            checks[name] = "ok"
        except Exception as e:  # a probe reports, it does not raise
            log.warning("readiness check %s failed: %s", name, e)
            checks[name] = f"error: {type(e).__name__}: {e}"

    run("database", lambda: session.execute(text("SELECT 1")))
    run("broker", queue.ping)
    run("blob_store", blobs.ping)
    failing = [name for name, result in checks.items() if result != "ok"]
    body = Readiness(status="unavailable" if failing else "ok", checks=checks, failing=failing)
    return JSONResponse(body.model_dump(), status_code=503 if failing else 200)
