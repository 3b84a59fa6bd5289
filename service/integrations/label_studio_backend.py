"""Sift as a Label Studio ML backend: each task's valuation score as a prediction ``score``.

Label Studio talks to an ML backend over four calls under the backend's URL (its
``ml/api_connector.py``): ``GET health``, ``POST setup`` (project, label config, and the
project owner's Label Studio token, which Sift ignores and never stores), ``POST predict``
(``{"tasks": [...]}`` → ``{"results": [...]}``, one entry per task, in order) and ``POST
webhook`` (project events; Sift has nothing to train, so it only acknowledges them). Sift
answers them under a URL that names the valuation::

    /v1/label-studio/valuations/{valuation_id}/health | setup | predict | webhook

A task names its Sift record in ``data.sift_record_id`` (``sift label-studio push`` writes it,
with ``sift_score`` and ``sift_rank``). Its prediction is ``{"result": [], "score": <the
valuation's score>, "model_version": "sift-<method>-<valuation_id>"}``: no region, the score
only, which the Data Manager shows and sorts in its *Prediction score* column. A task without a
record id, or whose record the valuation did not score, gets no prediction (an empty list),
not an error: Label Studio drops the whole batch when a backend fails.

Auth: Label Studio's ML backend settings hold a Basic auth user and password, sent on every
call; the password is a Sift API key (any user name). ``Authorization: Bearer <key>`` works
too. The key's tenant scopes the valuation as everywhere in ``/v1`` (another tenant's is a
404). Nothing here writes to Sift, so a ``read_only`` key is enough, and the one to give Label
Studio, which stores it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth.dependencies import bearer, principal_of_key
from service.auth.keys import Principal
from service.db.models import JobStatus, Score, Valuation
from service.db.session import get_db
from service.errors import (
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    error_responses,
)
from service.request_text import check_request_text
from service.valuations import service as valuations
from workers.contracts import JSON_INT_MAX

RECORD_FIELD = "sift_record_id"
"""The task data field that names the Sift record."""

MAX_TASKS = 50_000
"""Tasks in one predict call (Label Studio sends the tasks selected for *Retrieve
predictions* in one call)."""

LOOKUP_CHUNK = 500
"""Record ids per ``IN (...)`` query."""

MAX_RECORD_ID = 255


class BackendUnauthorized(Unauthorized):
    """A 401 that offers both schemes Label Studio and other clients use."""

    description = (
        "Missing, malformed, unknown or revoked API key: `Authorization: Bearer <key>`, or "
        "Basic auth with the key as the password (Label Studio's ML backend auth)"
    )
    headers = {"WWW-Authenticate": 'Bearer realm="sift", Basic realm="sift"'}


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header, or None (no header, another scheme,
    or not ``base64(user:password)``)."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


async def backend_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[Session, Depends(get_db)],
) -> Principal:
    """The caller, from a Bearer key or a Basic password that is a key; every role may call
    (nothing here writes). The request session then acts for the key's tenant."""
    key = credentials.credentials if credentials is not None else None
    if key is None:
        key = basic_password(request.headers.get("authorization"))
    if key is None:
        raise BackendUnauthorized(
            "an API key is required: `Authorization: Bearer <key>`, or Basic auth with the "
            "key as the password (Label Studio: the ML backend's basic auth password)"
        )
    principal = await principal_of_key(request, session, key, refuse=BackendUnauthorized)
    request.state.principal = principal
    if session.info.get("tenant_id") not in (None, principal.tenant_id):
        session.expunge_all()  # a session reused across tenants (tests) holds no foreign rows
    session.info["tenant_id"] = principal.tenant_id
    return principal


def backend_valuation(
    valuation_id: str,
    principal: Annotated[Principal, Depends(backend_principal)],
    session: Annotated[Session, Depends(get_db)],
) -> Valuation:
    """The valuation the URL names, of the key's tenant (404 otherwise); resolved before the
    body is validated, so another tenant's valuation is a 404 whatever the body."""
    return valuations.get_valuation(session, valuation_id)


ValuationDep = Annotated[Valuation, Depends(backend_valuation)]
SessionDep = Annotated[Session, Depends(get_db)]

router = APIRouter(
    prefix="/v1/label-studio/valuations/{valuation_id}",
    tags=["label-studio"],
    dependencies=[Depends(backend_principal), Depends(check_request_text)],
    responses=error_responses(BackendUnauthorized, Forbidden, NotFound, ServiceUnavailable),
)


def model_version(valuation: Valuation) -> str:
    return f"sift-{valuation.method}-{valuation.id}"


def _require_succeeded(valuation: Valuation) -> None:
    status = valuation.job.status
    if status != JobStatus.succeeded:
        raise Conflict(
            f"valuation {valuation.id} has status {status!r}; it predicts only once it has "
            "succeeded"
        )


# --- bodies -----------------------------------------------------------------------------------


class HealthRead(BaseModel):
    status: str = Field(description="UP: the backend answers (the valuation may still run)")
    model_class: str
    valuation_id: str
    valuation_status: str = Field(description="queued | running | succeeded | failed | cancelled")


class SetupBody(BaseModel):
    """What Label Studio sends to ``setup``; every field optional, others ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    project: str | None = Field(default=None, max_length=200, description="`{id}.{created}`")
    label_config: str | None = Field(
        default=None,
        alias="schema",
        max_length=1_000_000,
        description="the project's label config (not used)",
    )
    hostname: str | None = Field(default=None, max_length=2000, description="not used")
    access_token: str | None = Field(
        default=None,
        max_length=2000,
        description="the project owner's Label Studio token: ignored, never stored",
    )
    extra_params: dict[str, Any] | None = Field(default=None, description="not used")


class SetupRead(BaseModel):
    model_version: str


class TaskIn(BaseModel):
    """One Label Studio task; fields other than ``id`` and ``data`` are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: int = Field(ge=0, le=JSON_INT_MAX, description="the Label Studio task id")
    data: dict[str, Any] = Field(
        description=f"the task's data; `{RECORD_FIELD}` names the Sift record"
    )


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tasks: list[TaskIn] = Field(max_length=MAX_TASKS)
    project: str | None = Field(default=None, max_length=200)
    label_config: str | None = Field(default=None, max_length=1_000_000)
    params: dict[str, Any] | None = None


class PredictionRead(BaseModel):
    result: list[Any] = Field(description="no regions: the prediction is its score")
    score: float = Field(description="the valuation's score of the task's record")
    model_version: str


class PredictRead(BaseModel):
    results: list[list[PredictionRead]] = Field(
        description="per task, in order: one prediction, or none (no or unknown record id)"
    )
    model_version: str


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: str | None = Field(default=None, max_length=200)


class LabelStudioWebhookRead(BaseModel):
    status: str
    action: str | None


# --- routes -----------------------------------------------------------------------------------


@router.get("/health", response_model=HealthRead)
def health(valuation: ValuationDep) -> Any:
    """Label Studio's connection check: the key is valid and names a valuation of its tenant."""
    return HealthRead(
        status="UP",
        model_class="Sift",
        valuation_id=valuation.id,
        valuation_status=str(valuation.job.status),
    )


@router.post("/setup", response_model=SetupRead, responses=error_responses(Conflict))
def setup(valuation: ValuationDep, body: SetupBody | None = None) -> Any:
    """Connect a project: the model version its predictions carry; 409 until the valuation
    has succeeded (Label Studio then shows the backend in error)."""
    _require_succeeded(valuation)
    return SetupRead(model_version=model_version(valuation))


def record_id_of(task: TaskIn) -> str | None:
    value = task.data.get(RECORD_FIELD)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if 0 < len(text) <= MAX_RECORD_ID else None


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def scores_of(session: Session, valuation_id: str, record_ids: Sequence[str]) -> dict[str, float]:
    """The valuation's score of each of ``record_ids`` that it scored."""
    found: dict[str, float] = {}
    for chunk in _chunks(sorted(set(record_ids)), LOOKUP_CHUNK):
        rows = session.execute(
            select(Score.record_id, Score.score).where(
                Score.valuation_id == valuation_id, Score.record_id.in_(chunk)
            )
        )
        found.update({record_id: score for record_id, score in rows})
    return found


@router.post("/predict", response_model=PredictRead, responses=error_responses(Conflict))
def predict(valuation: ValuationDep, body: PredictBody, session: SessionDep) -> Any:
    """One entry per task, in order: the valuation's score of the record the task's
    `data.sift_record_id` names, or no prediction when it names none the valuation scored;
    409 until the valuation has succeeded."""
    _require_succeeded(valuation)
    record_ids = [record_id_of(task) for task in body.tasks]
    scores = scores_of(session, valuation.id, [r for r in record_ids if r is not None])
    version = model_version(valuation)
    results = [
        [PredictionRead(result=[], score=scores[r], model_version=version)]
        if r is not None and r in scores
        else []
        for r in record_ids
    ]
    session.commit()  # end the read transaction
    return PredictRead(results=results, model_version=version)


@router.post("/webhook", response_model=LabelStudioWebhookRead)
def webhook(valuation: ValuationDep, body: WebhookBody | None = None) -> Any:
    """Label Studio's project events (annotations created, training requested): Sift has
    nothing to train and acknowledges them."""
    return LabelStudioWebhookRead(status="ok", action=body.action if body is not None else None)
