"""Valuation rules. No commits here: the endpoint (or task) commits.

A valuation is a row in ``valuations`` plus its ``jobs`` row (status, progress, errors). The
API creates both as ``queued``; the workers move the job through ``running`` to a finished
state. Cancelling a queued job finishes it at once; a running job only gets
``cancel_requested`` and the worker stops at its next check.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import jobs, training
from service.blobs import BlobNotFound, BlobStore
from service.config import Settings
from service.datasets import repository as datasets
from service.db.models import (
    JobStatus,
    RewardSpec,
    Sample,
    Valuation,
)
from service.errors import Conflict, InvalidInput, NotFound
from service.models import repository as models
from service.pagination import Page, Pagination, newest_first
from service.score_sets.schemas import ValuationDistributionRead
from service.tenant_secrets import service as tenant_secrets
from service.valuations import repository
from service.valuations.schemas import (
    SampleRead,
    ScoreRead,
    ValuationCreate,
    ValuationRead,
)
from workers.contracts import (
    POLICY_METHODS,
    REWARD_NEEDS_LABEL,
    SELF_INFLUENCE_METHODS,
    WarmupSpec,
)
from workers.outbound import OutboundRefused, check_url

JOB_KIND = "valuation"


def _reward_spec(session: Session, body: ValuationCreate) -> RewardSpec | None:
    """NICE and NICE-IF need a reward spec; the loss-based methods must not get one."""
    methods = " and ".join(map(repr, POLICY_METHODS))
    endpoint = body.settings.nice.assist_endpoint
    if body.method not in POLICY_METHODS:
        for field in ("reward_spec_id", "assist_dataset_id"):
            if getattr(body, field) is not None:
                raise InvalidInput(
                    f"{field} is for methods {methods}, not {body.method!r}",
                    field=f"body.{field}",
                )
        if endpoint is not None:
            raise InvalidInput(
                f"settings.nice.assist_endpoint is for methods {methods}, not {body.method!r}",
                field="body.settings.nice.assist_endpoint",
            )
        return None
    if endpoint is not None and body.assist_dataset_id is not None:
        raise InvalidInput(
            "give the stronger model's responses either as assist_dataset_id or as "
            "settings.nice.assist_endpoint, not both",
            field="body.settings.nice.assist_endpoint",
        )
    if endpoint is not None and endpoint.api_key_secret is not None:
        tenant_secrets.require(
            session,
            endpoint.api_key_secret,
            endpoint.base_url,
            field="body.settings.nice.assist_endpoint.api_key_secret",
        )
    if body.assist_dataset_id is not None:
        assist = datasets.get(session, body.assist_dataset_id)
        if assist is None:
            raise InvalidInput(
                f"dataset {body.assist_dataset_id} does not exist", field="body.assist_dataset_id"
            )
        if assist.n_prompt_only:
            raise InvalidInput(
                f"assist dataset {assist.id} has {assist.n_prompt_only} records without a "
                "response; each record must carry the stronger model's response",
                field="body.assist_dataset_id",
            )
    if body.reward_spec_id is None:
        raise InvalidInput(
            f"method {body.method!r} needs a reward_spec_id", field="body.reward_spec_id"
        )
    spec = session.get(RewardSpec, body.reward_spec_id)
    if spec is None:
        raise InvalidInput(
            f"reward spec {body.reward_spec_id} does not exist", field="body.reward_spec_id"
        )
    return spec


def _check_probes_given(body: ValuationCreate) -> None:
    """Every method scores against probes but the self-influence ones, which must get none."""
    if body.method in SELF_INFLUENCE_METHODS:
        if body.probe_dataset_id is not None:
            raise InvalidInput(
                f"method {body.method!r} values each pool record by itself and takes no "
                "probe_dataset_id; leave it out",
                field="body.probe_dataset_id",
            )
    elif body.probe_dataset_id is None:
        raise InvalidInput(
            f"method {body.method!r} needs a probe_dataset_id (the target-task examples)",
            field="body.probe_dataset_id",
        )


def warmup_schedule(n_pool: int, warmup: WarmupSpec) -> tuple[int, int, int, int]:
    """``(training examples, steps per epoch, total steps, warmup steps)`` of the warmup on a
    pool of ``n_pool`` records, as ``workers.engine.warmup`` computes them (its
    ``select_warmup_subset`` and ``schedule_steps``); records too long for max_length only
    lower these."""
    n_train = max(1, math.ceil(round(warmup.fraction * n_pool, 9)))
    return n_train, *training.schedule(
        n_train, warmup.batch_size, warmup.epochs, warmup.warmup_ratio
    )


def _check_warmup_learns(n_pool: int, warmup: WarmupSpec) -> None:
    """Refuse a warmup whose every step has learning rate 0: one optimizer step, spent in the
    linear warmup from 0 (``workers.engine.warmup.check_schedule_learns`` has the
    arithmetic). Fewer records fitting in max_length cannot add steps, so this is certain."""
    n_train, steps_per_epoch, total, warmup_steps = warmup_schedule(n_pool, warmup)
    if total == 1 and warmup_steps >= 1:
        raise InvalidInput(
            f"this warmup cannot learn: fraction {warmup.fraction} of the pool's {n_pool} "
            f"records = {n_train} training examples, at batch_size {warmup.batch_size} "
            f"{steps_per_epoch} step per epoch, x {warmup.epochs} epoch = {total} optimizer "
            f"step; warmup_ratio {warmup.warmup_ratio} makes ceil({warmup.warmup_ratio} x "
            f"{total}) = {warmup_steps} warmup step, taken at learning rate 0, and the "
            "valuation would fail at scoring. Set warmup_ratio to 0, or train for at least 2 "
            "steps (more epochs, a larger fraction or a smaller batch_size)",
            field="body.settings.warmup.warmup_ratio",
        )


def _check_warmup_eval(session: Session, dataset_id: str | None) -> None:
    """The warmup's held-out set is scored by its response loss: every record needs one."""
    if dataset_id is None:
        return
    dataset = datasets.get(session, dataset_id)
    if dataset is None:
        raise InvalidInput(
            f"dataset {dataset_id} does not exist", field="body.warmup_eval_dataset_id"
        )
    if dataset.n_prompt_only:
        raise InvalidInput(
            f"dataset {dataset_id} has {dataset.n_prompt_only} records without a response; "
            "the warmup's held-out loss is the loss of each record's response, so every "
            "record needs one",
            field="body.warmup_eval_dataset_id",
        )


def create_valuation(session: Session, body: ValuationCreate, settings: Settings) -> Valuation:
    if not models.exists(session, body.model_id):
        raise InvalidInput(f"model {body.model_id} does not exist", field="body.model_id")
    _check_probes_given(body)
    reward = _reward_spec(session, body)
    endpoint = body.settings.nice.assist_endpoint
    if endpoint is not None:  # the worker calls it: same rules as workers.outbound
        try:
            check_url(endpoint.base_url, settings.outbound_policy())
        except OutboundRefused as exc:
            raise InvalidInput(
                f"assist endpoint refused: {exc}",
                field="body.settings.nice.assist_endpoint.base_url",
            ) from exc
    for field in ("pool_dataset_id", "probe_dataset_id"):
        dataset_id = getattr(body, field)
        if dataset_id is None:  # self-influence: no probes (_check_probes_given)
            continue
        dataset = datasets.get(session, dataset_id)
        if dataset is None:
            raise InvalidInput(f"dataset {dataset_id} does not exist", field=f"body.{field}")
        labels_optional = (
            field == "probe_dataset_id"
            and reward is not None
            and not REWARD_NEEDS_LABEL[reward.kind]
        )
        if dataset.n_prompt_only and not labels_optional:
            if field == "pool_dataset_id":
                role = "pool records"
            elif reward is not None:
                role = f"probes scored by a {reward.kind!r} reward (their response is the label)"
            else:
                role = f"{body.method} probes"
            raise InvalidInput(
                f"dataset {dataset_id} has {dataset.n_prompt_only} records without a response; "
                f"{role} need one (prompt-only probes are for NICE or NICE-IF with a reward "
                "that needs no label)",
                field=f"body.{field}",
            )
        if field == "pool_dataset_id":
            _check_warmup_learns(dataset.n_records, body.settings.warmup)
    _check_warmup_eval(session, body.warmup_eval_dataset_id)
    job = jobs.new_job(session, JOB_KIND)
    valuation = Valuation(
        job_id=job.id,
        model_id=body.model_id,
        pool_dataset_id=body.pool_dataset_id,
        probe_dataset_id=body.probe_dataset_id,
        reward_spec_id=body.reward_spec_id,
        assist_dataset_id=body.assist_dataset_id,
        warmup_eval_dataset_id=body.warmup_eval_dataset_id,
        method=body.method,
        settings=body.settings.model_dump(mode="json"),
        skipped=[],
    )
    valuation.job = job
    session.add(valuation)
    session.flush()
    return valuation


def get_valuation(session: Session, valuation_id: str, *, for_update: bool = False) -> Valuation:
    valuation = repository.get(session, valuation_id, for_update=for_update)
    if valuation is None:
        raise NotFound(f"valuation {valuation_id} not found", field="valuation_id")
    return valuation


def require_succeeded(valuation: Valuation) -> None:
    status = valuation.job.status
    if status != JobStatus.succeeded:
        raise Conflict(
            f"valuation {valuation.id} has status {status!r}; scores exist only once it has "
            "succeeded"
        )


def cancel_valuation(session: Session, valuation_id: str) -> Valuation:
    valuation = get_valuation(session, valuation_id, for_update=True)
    jobs.cancel(session, valuation.job, what=f"valuation {valuation_id}")
    return valuation


def to_read(valuation: Valuation) -> ValuationRead:
    job = valuation.job
    return ValuationRead.model_validate(
        {
            "id": valuation.id,
            "job_id": valuation.job_id,
            "method": valuation.method,
            "model_id": valuation.model_id,
            "pool_dataset_id": valuation.pool_dataset_id,
            "probe_dataset_id": valuation.probe_dataset_id,
            "reward_spec_id": valuation.reward_spec_id,
            "assist_dataset_id": valuation.assist_dataset_id,
            "warmup_eval_dataset_id": valuation.warmup_eval_dataset_id,
            "settings": valuation.settings,
            **jobs.job_state(job),
            # one JSON column for both cuts: records left out, and responses cut part-way
            "skipped": [s for s in valuation.skipped if s.get("cut") != "response"],
            "truncated": [
                {k: v for k, v in s.items() if k != "cut"}
                for s in valuation.skipped
                if s.get("cut") == "response"
            ],
            "n_scored": valuation.n_scored,
            "warmup_run_id": valuation.warmup_run_id,
            "created_at": valuation.created_at,
        }
    )


def list_valuations(session: Session, page: Pagination) -> Page[ValuationRead]:
    rows, total = newest_first(session, Valuation, page)
    return Page(items=[to_read(v) for v in rows], total=total, limit=page.limit, offset=page.offset)


def list_samples(session: Session, valuation_id: str, page: Pagination) -> Page[SampleRead]:
    """NICE's sampled responses and rewards, by checkpoint, probe and sample (for audit)."""
    valuation = get_valuation(session, valuation_id)
    if valuation.method not in POLICY_METHODS:
        raise Conflict(
            f"valuation {valuation_id} uses {valuation.method!r}; only "
            f"{' and '.join(map(repr, POLICY_METHODS))} sample responses",
            field="valuation_id",
        )
    where = Sample.valuation_id == valuation_id
    total = session.scalar(select(func.count()).select_from(Sample).where(where)) or 0
    rows = session.scalars(
        select(Sample)
        .where(where)
        .order_by(Sample.epoch, Sample.probe_record_id, Sample.sample_index)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    return Page(
        items=[SampleRead.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


def list_scores(session: Session, valuation_id: str, page: Pagination) -> Page[ScoreRead]:
    valuation = get_valuation(session, valuation_id)
    require_succeeded(valuation)
    rows, total = repository.scores_page(session, valuation_id, page.limit, page.offset)
    return Page(
        items=[
            ScoreRead(rank=rank, record_id=record_id, score=score, per_subtask=per_subtask)
            for rank, record_id, score, per_subtask in rows
        ],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


def _score_summary(valuation: Valuation) -> dict[str, Any]:
    require_succeeded(valuation)
    if valuation.score_summary is None:
        raise Conflict(
            f"valuation {valuation.id} was scored before score distributions were stored; "
            "run it again (its warmup and features are reused) for one"
        )
    return valuation.score_summary


def distribution(session: Session, valuation_id: str) -> ValuationDistributionRead:
    """Count, mean, std, min, max, quantiles and histogram of the scores (409 until scored)."""
    valuation = get_valuation(session, valuation_id)
    summary = _score_summary(valuation)
    return ValuationDistributionRead.model_validate(
        {
            **{k: v for k, v in summary.items() if k != "plot_blob_key"},
            "valuation_id": valuation.id,
            "method": valuation.method,
            "plot": f"/v1/valuations/{valuation.id}/distribution.png",
        }
    )


def distribution_png(session: Session, blobs: BlobStore, valuation_id: str) -> bytes:
    key = _score_summary(get_valuation(session, valuation_id))["plot_blob_key"]
    try:
        return blobs.get_bytes(key)
    except BlobNotFound:
        raise NotFound(
            f"the histogram of valuation {valuation_id} is missing from the blob store ({key})"
        ) from None
