from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response

from service import deletion, jobs
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, error_responses
from service.pagination import Page, PaginationDep
from service.queue import QueueDep
from service.studies import service, wrappers
from service.studies.schemas import (
    ProbeQueriesCreate,
    ProbeQueriesRead,
    ProbeQuery,
    StudyCreate,
    StudyRead,
)
from service.webhooks.callbacks import SettingsDep, attach_callback
from workers.contracts import STUDY_RUN, StudyTask

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post(
    "", status_code=202, response_model=StudyRead, responses=error_responses(ServiceUnavailable)
)
def create_study(
    body: StudyCreate, session: SessionDep, queue: QueueDep, settings: SettingsDep
) -> Any:
    """Start a strategy study (seed 001): does training on each probe set Z'_k move the
    evaluation set Z, paired (s_in) and unpaired (s_cross), at each checkpoint?

    Pairings are checked first (422 naming the records or pair ids that do not line up). The
    study is committed before its task is sent; if the broker refuses it, the reply is 503.
    """
    study = service.create_study(session, body)
    attach_callback(session, study.job_id, body.callback_url, settings)
    session.commit()
    jobs.enqueue_committed(
        session,
        queue,
        STUDY_RUN,
        StudyTask(study_id=study.id),
        study.job,
        noun="study",
        resource_id=study.id,
    )
    return service.to_read(study)


@router.get("", response_model=Page[StudyRead])
def list_studies(session: SessionDep, page: PaginationDep) -> Any:
    return service.list_studies(session, page)


@router.post("/probe-queries", response_model=ProbeQueriesRead)
def probe_queries(body: ProbeQueriesCreate) -> Any:
    """Probe queries from reference examples with a seed 001 tab. 3 wrapper; write each
    probe's response yourself (the CoT answer, the clarified query, the evaluation), keep
    ``pair`` as the record's pair key, and upload them as a probe set."""
    queries = []
    for i, example in enumerate(body.examples):
        try:
            query = wrappers.wrap_query(body.strategy, example.query, example.response)
        except ValueError as e:
            raise InvalidInput(str(e), field=f"body.examples[{i}].response") from e
        queries.append(ProbeQuery(pair=example.pair, query=query))
    return ProbeQueriesRead(strategy=body.strategy, queries=queries)


@router.get("/{study_id}", response_model=StudyRead, responses=error_responses(NotFound))
def get_study(study_id: str, session: SessionDep) -> Any:
    """The study's job state and, once it has succeeded, its curves, per-pair values and
    verdicts."""
    return service.to_read(service.get_study(session, study_id))


@router.delete(
    "/{study_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound),
)
def delete_study(study_id: str, session: SessionDep, blobs: BlobStoreDep) -> Response:
    """Delete a study with its job and plots.

    A queued or running study is cancelled by this. The gradients it stored are deleted too
    once no other study or valuation on the same checkpoints reads the same data; its warmup
    run stays (an uploaded run is deleted only by ``DELETE /v1/warmup-runs/{id}``).
    """
    deleted = deletion.delete_resource(session, "study", study_id)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)


@router.post(
    "/{study_id}/cancel",
    status_code=202,
    response_model=StudyRead,
    responses=error_responses(NotFound, Conflict),
)
def cancel_study(study_id: str, session: SessionDep) -> Any:
    study = service.cancel_study(session, study_id)
    session.commit()
    return service.to_read(study)


@router.get(
    "/{study_id}/plot.{fmt}",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in service.PLOT_FORMATS.values()}},
        **error_responses(NotFound, Conflict),
    },
)
def get_plot(
    study_id: str, fmt: Literal["png", "svg"], session: SessionDep, blobs: BlobStoreDep
) -> Response:
    """s_in and s_cross against training step, one curve and interval band per probe set;
    409 until the study has succeeded."""
    key = service.plot_key(session, study_id, fmt)
    return Response(blobs.get_bytes(key), media_type=service.PLOT_FORMATS[fmt])
