from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from service import deletion, jobs
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.deletion import CascadeQuery
from service.errors import Conflict, NotFound, ServiceUnavailable, error_responses
from service.pagination import Page, PaginationDep
from service.queue import QueueDep
from service.score_sets import service
from service.score_sets.schemas import (
    CompareRead,
    DistributionRead,
    Order,
    RecordValues,
    ScoreSetCreate,
    ScoreSetRead,
)
from service.webhooks.callbacks import SettingsDep, attach_callback
from workers.contracts import SCORE_SET_RUN, ScoreSetTask

router = APIRouter(prefix="/score-sets", tags=["score sets"])

ColumnQuery = Annotated[
    str, Query(min_length=1, max_length=300, description="a column of the score set, e.g. 'nll'")
]


@router.post(
    "", status_code=202, response_model=ScoreSetRead, responses=error_responses(ServiceUnavailable)
)
def create_score_set(
    body: ScoreSetCreate, session: SessionDep, queue: QueueDep, settings: SettingsDep
) -> Any:
    """Score every record of a dataset with one seed 003 scorer: quality (model losses and
    uncertainty, IFD), text statistics, knn distance (plus a dataset-level diversity report),
    importance against probes (random, bm25, dsir, rds), or each response's reward under a
    reward spec.

    What the scorer needs is checked first (422 naming the field: a model, probe set or reward
    spec it lacks or does not use, a quality or reward set over prompt-only records, a label
    reward over records without metadata.label, a knn set of at most k records or of fewer
    than settings.n_clusters). The score set is committed before its task is sent; if the
    broker refuses it, the reply is 503.
    """
    score_set = service.create_score_set(session, body)
    attach_callback(session, score_set.job_id, body.callback_url, settings)
    session.commit()
    jobs.enqueue_committed(
        session,
        queue,
        SCORE_SET_RUN,
        ScoreSetTask(score_set_id=score_set.id),
        score_set.job,
        noun="score set",
        resource_id=score_set.id,
    )
    return service.to_read(score_set)


@router.get("", response_model=Page[ScoreSetRead])
def list_score_sets(session: SessionDep, page: PaginationDep) -> Any:
    """Newest first."""
    return service.list_score_sets(session, page)


@router.get("/compare", response_model=CompareRead, responses=error_responses(NotFound, Conflict))
def compare_score_sets(
    session: SessionDep,
    blobs: BlobStoreDep,
    a: Annotated[str, Query(description="the first score set")],
    a_column: ColumnQuery,
    b: Annotated[str, Query(description="the second score set (may be the first)")],
    b_column: ColumnQuery,
    k: Annotated[int, Query(ge=1, le=1_000_000, description="size of the top-k lists")] = 100,
    a_order: Annotated[
        Order, Query(description="desc: higher values rank first in a's top k")
    ] = "desc",
    b_order: Annotated[Order, Query(description="desc: higher values rank first in b's top k")] = (
        "desc"
    ),
) -> Any:
    """How two columns agree, over the records (matched by record_id) with a value in both:
    Spearman's rank correlation of the two rankings (average ranks for ties; positive when
    they agree, so nll ascending against a score descending compares like with like) and the
    overlap of the top k by each side's order (ties broken by record_id).
    409 until both score sets have succeeded."""
    return service.compare(
        session,
        blobs,
        a=a,
        a_column=a_column,
        a_order=a_order,
        b=b,
        b_column=b_column,
        b_order=b_order,
        k=k,
    )


@router.get("/{score_set_id}", response_model=ScoreSetRead, responses=error_responses(NotFound))
def get_score_set(score_set_id: str, session: SessionDep) -> Any:
    """The job's state and, once it has succeeded, its columns and their summaries."""
    return service.to_read(service.get_score_set(session, score_set_id))


@router.delete(
    "/{score_set_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound, Conflict),
)
def delete_score_set(
    score_set_id: str, session: SessionDep, blobs: BlobStoreDep, cascade: CascadeQuery = False
) -> Response:
    """Delete a score set with its job, values and histograms.

    A queued or running score set is cancelled by this. 409 while a curation's recipe names it
    (finished or not): the message names each; delete them first, or pass ``cascade=true`` to
    delete them with it (a queued or running one is cancelled).
    """
    deleted = deletion.delete_resource(session, "score_set", score_set_id, cascade=cascade)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)


@router.post(
    "/{score_set_id}/cancel",
    status_code=202,
    response_model=ScoreSetRead,
    responses=error_responses(NotFound, Conflict),
)
def cancel_score_set(score_set_id: str, session: SessionDep) -> Any:
    """Cancel: a queued score set is cancelled at once, a running one when the worker next
    checks ``cancel_requested``; a finished one cannot be cancelled (409)."""
    score_set = service.cancel_score_set(session, score_set_id)
    session.commit()
    return service.to_read(score_set)


@router.get(
    "/{score_set_id}/values",
    response_model=Page[RecordValues],
    responses=error_responses(NotFound, Conflict),
)
def list_values(
    score_set_id: str, session: SessionDep, blobs: BlobStoreDep, page: PaginationDep
) -> Any:
    """Every record's values in dataset order (null where a value is undefined, e.g. the MTLD
    of a text without repeats); 409 until the score set has succeeded."""
    return service.list_values(session, blobs, score_set_id, page)


@router.get(
    "/{score_set_id}/distribution",
    response_model=DistributionRead,
    responses=error_responses(NotFound, Conflict),
)
def get_distribution(score_set_id: str, column: ColumnQuery, session: SessionDep) -> Any:
    """One column's count, missing, mean, std, min, max, quantiles and histogram; 409 until
    the score set has succeeded, 422 for a column it does not have."""
    return service.distribution(session, score_set_id, column)


@router.get(
    "/{score_set_id}/distribution.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(NotFound, Conflict)},
)
def get_distribution_png(
    score_set_id: str, column: ColumnQuery, session: SessionDep, blobs: BlobStoreDep
) -> Response:
    """The column's histogram as a PNG; 409 until the score set has succeeded."""
    return Response(
        service.distribution_png(session, blobs, score_set_id, column), media_type="image/png"
    )
