from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from service import deletion, jobs
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.config import Settings, get_settings
from service.errors import Conflict, NotFound, ServiceUnavailable, error_responses
from service.pagination import Page, PaginationDep
from service.queue import QueueDep
from service.score_sets.schemas import ValuationDistributionRead
from service.valuations import service
from service.valuations.schemas import (
    SampleRead,
    ScoreRead,
    ValuationCreate,
    ValuationRead,
)
from service.webhooks.callbacks import attach_callback
from workers.contracts import VALUATION_FEATURIZE, ValuationTask

router = APIRouter(prefix="/valuations", tags=["valuations"])


@router.post(
    "",
    status_code=202,
    response_model=ValuationRead,
    responses=error_responses(ServiceUnavailable),
)
def create_valuation(
    body: ValuationCreate,
    session: SessionDep,
    queue: QueueDep,
    settings: Annotated[Settings, Depends(get_settings)],
) -> Any:
    """Create a valuation job and queue its first stage (featurization).

    The job and valuation are committed *before* the task is sent, so the worker always finds
    them. If the broker refuses the task the job is marked failed and the reply is 503.

    Settings whose warmup cannot learn are a 422 naming `settings.warmup.warmup_ratio`: a
    warmup of one optimizer step (the pool's warmup fraction fits in one batch, one epoch)
    with `warmup_ratio` > 0 takes that step at learning rate 0.
    """
    valuation = service.create_valuation(session, body, settings)
    attach_callback(session, valuation.job_id, body.callback_url, settings)
    session.commit()
    jobs.enqueue_committed(
        session,
        queue,
        VALUATION_FEATURIZE,
        ValuationTask(valuation_id=valuation.id),
        valuation.job,
        noun="valuation",
        resource_id=valuation.id,
    )
    return service.to_read(valuation)


@router.get("", response_model=Page[ValuationRead])
def list_valuations(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_valuations(session, page)


@router.get("/{valuation_id}", response_model=ValuationRead, responses=error_responses(NotFound))
def get_valuation(valuation_id: str, session: SessionDep) -> Any:
    return service.to_read(service.get_valuation(session, valuation_id))


@router.delete(
    "/{valuation_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound),
)
def delete_valuation(valuation_id: str, session: SessionDep, blobs: BlobStoreDep) -> Response:
    """Delete a valuation with its job, scores, samples, selections and score file.

    A queued or running valuation is cancelled by this: its worker stops at its next step and
    writes nothing more. Its warmup run and stored features are deleted too once no other
    valuation or study uses them (they are shared between valuations of the same data).
    """
    deleted = deletion.delete_resource(session, "valuation", valuation_id)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)


@router.post(
    "/{valuation_id}/cancel",
    status_code=202,
    response_model=ValuationRead,
    responses=error_responses(NotFound, Conflict),
)
def cancel_valuation(valuation_id: str, session: SessionDep) -> Any:
    """Cancel: a queued valuation is cancelled at once, a running one when the worker next
    checks ``cancel_requested``; a finished one cannot be cancelled (409)."""
    valuation = service.cancel_valuation(session, valuation_id)
    session.commit()
    return service.to_read(valuation)


@router.get(
    "/{valuation_id}/scores",
    response_model=Page[ScoreRead],
    responses=error_responses(NotFound, Conflict),
)
def list_scores(valuation_id: str, session: SessionDep, page: PaginationDep) -> Any:
    """Pool records by rank (0 = most valuable); 409 until the valuation has succeeded."""
    return service.list_scores(session, valuation_id, page)


@router.get(
    "/{valuation_id}/samples",
    response_model=Page[SampleRead],
    responses=error_responses(NotFound, Conflict),
)
def list_samples(valuation_id: str, session: SessionDep, page: PaginationDep) -> Any:
    """NICE only: every sampled response with its reward, by checkpoint, probe and sample."""
    return service.list_samples(session, valuation_id, page)


@router.get(
    "/{valuation_id}/distribution",
    response_model=ValuationDistributionRead,
    responses=error_responses(NotFound, Conflict),
)
def get_distribution(valuation_id: str, session: SessionDep) -> Any:
    """The scores' count, mean, std, min, max, quantiles and 20-bin histogram (e.g. where the
    self-influence tail starts); 409 until the valuation has succeeded."""
    return service.distribution(session, valuation_id)


@router.get(
    "/{valuation_id}/distribution.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(NotFound, Conflict)},
)
def get_distribution_png(valuation_id: str, session: SessionDep, blobs: BlobStoreDep) -> Response:
    """The scores' histogram as a PNG; 409 until the valuation has succeeded."""
    return Response(service.distribution_png(session, blobs, valuation_id), media_type="image/png")
