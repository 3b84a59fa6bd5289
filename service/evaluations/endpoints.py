from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response

from service import deletion, jobs
from service.auth.dependencies import BlobStoreDep, SessionDep
from service.blobs import BlobNotFound
from service.errors import Conflict, NotFound, ServiceUnavailable, error_responses
from service.evaluations import service
from service.evaluations.schemas import EvaluationCreate, EvaluationRead, ExampleRead
from service.pagination import Page, PaginationDep
from service.queue import QueueDep
from service.webhooks.callbacks import SettingsDep, attach_callback
from workers.contracts import EVALUATION_RUN, EvaluationTask

router = APIRouter(prefix="/evaluations", tags=["evaluations"])


@router.post(
    "",
    status_code=202,
    response_model=EvaluationRead,
    responses=error_responses(Conflict, ServiceUnavailable),
)
def create_evaluation(
    body: EvaluationCreate,
    session: SessionDep,
    blobs: BlobStoreDep,
    queue: QueueDep,
    settings: SettingsDep,
) -> Any:
    """Does training on your selection help? Fine-tune fresh LoRA adapters on each arm's
    training set — the same budget, settings and training seed for every arm — then score the
    held-out target set: response loss and, optionally, a task metric (a reward of the greedy
    response, or multiple-choice accuracy by log-likelihood). The result is a table per arm
    with bootstrap intervals over target examples (and the spread over seeds for random arms),
    the training curves and a plot.

    Arms and the metric are checked first (422 naming the field). The evaluation is committed
    before its task is sent; if the broker refuses it, the reply is 503.
    """
    evaluation = service.create_evaluation(session, blobs, body)
    attach_callback(session, evaluation.job_id, body.callback_url, settings)
    session.commit()
    jobs.enqueue_committed(
        session,
        queue,
        EVALUATION_RUN,
        EvaluationTask(evaluation_id=evaluation.id),
        evaluation.job,
        noun="evaluation",
        resource_id=evaluation.id,
    )
    return service.to_read(evaluation)


@router.get("", response_model=Page[EvaluationRead])
def list_evaluations(session: SessionDep, page: PaginationDep) -> Any:
    """Newest first."""
    return service.list_evaluations(session, page)


@router.get("/{evaluation_id}", response_model=EvaluationRead, responses=error_responses(NotFound))
def get_evaluation(evaluation_id: str, session: SessionDep) -> Any:
    """The job's state and, once it has succeeded, the table, curves and provenance."""
    return service.to_read(service.get_evaluation(session, evaluation_id))


@router.delete(
    "/{evaluation_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(NotFound),
)
def delete_evaluation(evaluation_id: str, session: SessionDep, blobs: BlobStoreDep) -> Response:
    """Delete an evaluation with its job, runs and plots; a queued or running one is cancelled
    by this. Its datasets, model, reward spec and arm sources stay."""
    deleted = deletion.delete_resource(session, "evaluation", evaluation_id)
    session.commit()
    deleted.remove_blobs(blobs)
    return Response(status_code=204)


@router.post(
    "/{evaluation_id}/cancel",
    status_code=202,
    response_model=EvaluationRead,
    responses=error_responses(NotFound, Conflict),
)
def cancel_evaluation(evaluation_id: str, session: SessionDep) -> Any:
    """Cancel: a queued evaluation at once, a running one at the worker's next training step;
    a finished one cannot be cancelled (409)."""
    evaluation = service.cancel_evaluation(session, evaluation_id)
    session.commit()
    return service.to_read(evaluation)


@router.get(
    "/{evaluation_id}/examples",
    response_model=Page[ExampleRead],
    responses=error_responses(NotFound, Conflict),
)
def list_examples(
    evaluation_id: str, session: SessionDep, blobs: BlobStoreDep, page: PaginationDep
) -> Any:
    """Each target record's response loss (and metric) under every arm (the mean over a
    random arm's seeds) and before training, in target order: which examples an arm moved.
    409 until the evaluation has succeeded."""
    return service.list_examples(session, blobs, evaluation_id, page)


@router.get(
    "/{evaluation_id}/plot.{fmt}",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in service.PLOT_FORMATS.values()}},
        **error_responses(NotFound, Conflict),
    },
)
def get_plot(
    evaluation_id: str, fmt: Literal["png", "svg"], session: SessionDep, blobs: BlobStoreDep
) -> Response:
    """Target loss (and metric) per arm with its interval, and the training curves; 409 until
    the evaluation has succeeded."""
    key = service.plot_key(session, evaluation_id, fmt)
    try:
        content = blobs.get_bytes(key)
    except BlobNotFound:
        raise NotFound(f"the plot of evaluation {evaluation_id} is missing ({key})") from None
    return Response(content, media_type=service.PLOT_FORMATS[fmt])
