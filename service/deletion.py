"""Deleting resources: what depends on what, what goes with a resource, and the caches after.

A resource cannot be deleted while another resource refers to it: the reply is a 409 that names
every such *dependent* (with the status of a job-backed one), and the way out is to delete them
first, or to repeat the DELETE with ``?cascade=true``, which deletes them with it (and theirs, and
so on). Nothing else blocks a delete: a *live* resource (its job queued or running) is cancelled
by its deletion, and a finished one has nothing left to run.

=============  =======================================================  ==========================
resource       its dependents (block without ``cascade``)               goes with it
=============  =======================================================  ==========================
dataset        valuations (pool, probes, assist), studies (evaluation   records; caches no longer
               or probe set), score sets (dataset, probes), curations,  referenced
               evaluations (pool, target)
model          valuations, score sets, curations, evaluations,          its Sift-trained warmup
               uploaded warmup runs, studies on its Sift-trained runs   runs
reward spec    valuations, score sets, evaluations
valuation      --                                                       job, scores, samples,
                                                                        selections, score file
selection      --
study          --                                                       job, plots
score set      curations whose recipe names it                          job, values, histograms
curation       --                                                       job
evaluation     -- (its arms copy their records: its selections,         job, runs, plots,
               curations and score sets may go)                         per-example values
warmup run     valuations and studies on it; a live valuation that      checkpoints, feature sets
               has not recorded its run yet and values the same pool    at them, their files
=============  =======================================================  ==========================

Every delete then collects the content-keyed caches (feature sets, Sift-trained warmup runs)
nothing references any more (``service.caches``). Rows are deleted in the request's transaction
(the endpoint commits); blobs after the commit (:meth:`Deleted.remove_blobs`), so a failed commit
never leaves rows whose files are gone. Job-backed rows go through
``service.jobs.delete_resources``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Query
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from service import caches, jobs
from service.blobs import BlobStore
from service.db.models import (
    Curation,
    Dataset,
    Evaluation,
    Job,
    Model,
    Record,
    RewardSpec,
    Sample,
    Score,
    ScoreSet,
    Selection,
    Study,
    Valuation,
    WarmupRun,
)
from service.errors import Conflict, NotFound

log = logging.getLogger(__name__)

Kind = Literal[
    "dataset",
    "model",
    "reward_spec",
    "valuation",
    "selection",
    "study",
    "score_set",
    "curation",
    "warmup_run",
    "evaluation",
]

_TABLES: dict[Kind, Any] = {
    "dataset": Dataset,
    "model": Model,
    "reward_spec": RewardSpec,
    "valuation": Valuation,
    "selection": Selection,
    "study": Study,
    "score_set": ScoreSet,
    "curation": Curation,
    "warmup_run": WarmupRun,
    "evaluation": Evaluation,
}
_NOUNS: dict[Kind, str] = {
    "dataset": "dataset",
    "model": "model",
    "reward_spec": "reward spec",
    "valuation": "valuation",
    "selection": "selection",
    "study": "study",
    "score_set": "score set",
    "curation": "curation",
    "warmup_run": "warmup run",
    "evaluation": "evaluation",
}
_FIELDS: dict[Kind, str] = {"reward_spec": "spec_id"}

_PHASES: tuple[Kind, ...] = (
    "evaluation",
    "selection",
    "curation",
    "valuation",
    "study",
    "score_set",
    "warmup_run",
    "reward_spec",
    "model",
    "dataset",
)
"""The order rows are deleted in: every kind after the kinds that may refer to it."""

SHOWN = 20
"""Dependents named in a 409 at most."""

CascadeQuery = Annotated[
    bool,
    Query(
        description="also delete every resource that depends on this one (and theirs); queued "
        "and running ones are cancelled. Without it, such dependents make the reply a 409 that "
        "names them."
    ),
]


@dataclass(frozen=True)
class Ref:
    """A resource, as a 409 names it: ``valuation 3f2a… (running)``."""

    kind: Kind
    id: str
    status: str | None = None
    why: str | None = None

    def __str__(self) -> str:
        detail = "; ".join(d for d in (self.status, self.why) if d)
        return f"{_NOUNS[self.kind]} {self.id}" + (f" ({detail})" if detail else "")


@dataclass
class Deleted:
    """What one DELETE removed, and the blob prefixes to remove once its rows are committed."""

    resources: list[Ref] = field(default_factory=list)
    collected: caches.Collected = field(default_factory=caches.Collected)
    blob_prefixes: list[str] = field(default_factory=list)

    def remove_blobs(self, blobs: BlobStore) -> None:
        """Delete the files of what was deleted (call after the commit). A failure is logged,
        not raised: the rows are gone, and what stays behind is unreachable."""
        remove_blobs(blobs, self.blob_prefixes)


def remove_blobs(blobs: BlobStore, prefixes: Iterable[str]) -> None:
    for prefix in dict.fromkeys(prefixes):
        try:
            blobs.delete_prefix(prefix)
        except Exception:
            log.exception("could not delete the blobs under %s of %r", prefix, blobs)


def delete_resource(
    session: Session, kind: Kind, resource_id: str, *, cascade: bool = False
) -> Deleted:
    """Delete a resource of the session's tenant (404 if it has none with this id); 409 naming
    its dependents unless ``cascade``, which deletes them too. Flushes; does not commit."""
    table = _TABLES[kind]
    if session.scalar(select(table.id).where(table.id == resource_id)) is None:
        raise NotFound(
            f"{_NOUNS[kind]} {resource_id} not found", field=_FIELDS.get(kind, f"{kind}_id")
        )
    status = None
    if hasattr(table, "job_id"):
        status = session.scalar(
            select(Job.status).join(table, table.job_id == Job.id).where(table.id == resource_id)
        )
    plan = _Plan(session, cascade)
    plan.visit(Ref(kind, resource_id, status))
    return plan.execute()


class _Plan:
    def __init__(self, session: Session, cascade: bool) -> None:
        self.session, self.cascade = session, cascade
        self.refs: dict[tuple[Kind, str], Ref] = {}

    def visit(self, ref: Ref) -> None:
        if (ref.kind, ref.id) in self.refs:
            return
        self.refs[(ref.kind, ref.id)] = ref
        found = [
            d
            for d in _DEPENDENTS[ref.kind](self.session, ref.id)
            if (d.kind, d.id) != (ref.kind, ref.id)
        ]
        if found and not self.cascade:
            shown = ", ".join(map(str, found[:SHOWN]))
            more = f" (and {len(found) - SHOWN} more)" if len(found) > SHOWN else ""
            raise Conflict(
                f"{ref} is used by {shown}{more}; delete them first, or repeat with "
                "?cascade=true to delete them with it (queued and running ones are cancelled)",
                field=_FIELDS.get(ref.kind, f"{ref.kind}_id"),
            )
        for dependent in found:
            self.visit(dependent)

    def ids(self, kind: Kind) -> list[str]:
        return [i for k, i in self.refs if k == kind]

    def execute(self) -> Deleted:
        session, out = self.session, Deleted(resources=list(self.refs.values()))
        for kind in _PHASES:
            ids = self.ids(kind)
            if ids and kind == "dataset":
                out.collected = caches.collect(session, leaving=ids)
                out.blob_prefixes += out.collected.blob_prefixes
            if ids:
                out.blob_prefixes += _DELETE[kind](session, ids)
        if not self.ids("dataset"):
            out.collected = caches.collect(session)
            out.blob_prefixes += out.collected.blob_prefixes
        session.flush()
        live = [r for r in out.resources if r.status in jobs.LIVE_STATUSES]
        if live:
            log.info("deleted while live (their workers drop them): %s", ", ".join(map(str, live)))
        return out


# --- dependents -------------------------------------------------------------------------------


def _job_refs(session: Session, kind: Kind, where: Any, why: str | None = None) -> list[Ref]:
    """The job-backed resources of ``kind`` matching ``where``, oldest first, with their status."""
    table = _TABLES[kind]
    rows = session.execute(
        select(table.id, Job.status)
        .join(Job, Job.id == table.job_id)
        .where(where)
        .order_by(table.created_at, table.id)
    )
    return [Ref(kind, i, status, why) for i, status in rows]


def _studies_reading(session: Session, dataset_id: str) -> list[Ref]:
    """Studies that read ``dataset_id`` as their evaluation set or one of their probe sets
    (kept as JSON, so filtered here)."""
    rows = session.execute(
        select(Study.id, Job.status, Study.eval_dataset_id, Study.probe_sets)
        .join(Job, Job.id == Study.job_id)
        .order_by(Study.created_at, Study.id)
    )
    return [
        Ref("study", i, status)
        for i, status, eval_id, probe_sets in rows
        if eval_id == dataset_id or any(p["dataset_id"] == dataset_id for p in probe_sets)
    ]


def _dataset_dependents(session: Session, dataset_id: str) -> list[Ref]:
    return [
        *_job_refs(
            session,
            "valuation",
            or_(
                Valuation.pool_dataset_id == dataset_id,
                Valuation.probe_dataset_id == dataset_id,
                Valuation.assist_dataset_id == dataset_id,
                Valuation.warmup_eval_dataset_id == dataset_id,
            ),
        ),
        *_studies_reading(session, dataset_id),
        *_job_refs(
            session,
            "score_set",
            or_(ScoreSet.dataset_id == dataset_id, ScoreSet.probe_dataset_id == dataset_id),
        ),
        *_job_refs(session, "curation", Curation.dataset_id == dataset_id),
        *_job_refs(
            session,
            "evaluation",
            or_(
                Evaluation.pool_dataset_id == dataset_id,
                Evaluation.target_dataset_id == dataset_id,
            ),
        ),
    ]


def _model_dependents(session: Session, model_id: str) -> list[Ref]:
    uploaded = session.scalars(
        select(WarmupRun.id)
        .where(WarmupRun.model_id == model_id, WarmupRun.origin == "upload")
        .order_by(WarmupRun.created_at, WarmupRun.id)
    )
    trained = select(WarmupRun.id).where(
        WarmupRun.model_id == model_id, WarmupRun.origin == "warmup"
    )
    return [
        *_job_refs(session, "valuation", Valuation.model_id == model_id),
        *_job_refs(session, "score_set", ScoreSet.model_id == model_id),
        *_job_refs(session, "curation", Curation.model_id == model_id),
        *_job_refs(session, "evaluation", Evaluation.model_id == model_id),
        *(Ref("warmup_run", i) for i in uploaded),
        *_job_refs(
            session,
            "study",
            Study.warmup_run_id.in_(trained),
            why="on a warmup run this model trained",
        ),
    ]


def _reward_spec_dependents(session: Session, spec_id: str) -> list[Ref]:
    return [
        *_job_refs(session, "valuation", Valuation.reward_spec_id == spec_id),
        *_job_refs(session, "score_set", ScoreSet.reward_spec_id == spec_id),
        *_job_refs(session, "evaluation", Evaluation.reward_spec_id == spec_id),
    ]


def recipe_score_sets(recipe: dict[str, Any]) -> set[str]:
    """The score sets a curation's recipe reads: its filters' and its pick's."""
    refs = [f.get("score_set_id") for f in recipe.get("filters", [])]
    pick = recipe.get("pick") or {}
    refs += [(pick.get(attr) or {}).get("score_set_id") for attr in ("by", "quality", "score")]
    return {r for r in refs if isinstance(r, str)}


def _score_set_dependents(session: Session, score_set_id: str) -> list[Ref]:
    rows = session.execute(
        select(Curation.id, Job.status, Curation.recipe)
        .join(Job, Job.id == Curation.job_id)
        .order_by(Curation.created_at, Curation.id)
    )
    return [
        Ref("curation", i, status)
        for i, status, recipe in rows
        if score_set_id in recipe_score_sets(recipe)
    ]


def _warmup_run_dependents(session: Session, run_id: str) -> list[Ref]:
    found = [
        *_job_refs(session, "valuation", Valuation.warmup_run_id == run_id),
        *_job_refs(session, "study", Study.warmup_run_id == run_id),
    ]
    run = session.get(WarmupRun, run_id)
    if run is None or run.origin != "warmup" or run.pool_dataset_id is None:
        return found
    pool = select(Dataset.content_hash).where(Dataset.id == run.pool_dataset_id)
    same_pool = select(Dataset.id).where(Dataset.content_hash == pool.scalar_subquery())
    pending = _job_refs(
        session,
        "valuation",
        and_(
            Valuation.warmup_run_id.is_(None),
            Valuation.pool_dataset_id.in_(same_pool),
            Job.status.in_(jobs.LIVE_STATUSES),
        ),
        why="it has not recorded its warmup run yet and may be reusing this one",
    )
    return found + pending


def _none(_session: Session, _id: str) -> list[Ref]:
    return []


_DEPENDENTS: dict[Kind, Callable[[Session, str], list[Ref]]] = {
    "dataset": _dataset_dependents,
    "model": _model_dependents,
    "reward_spec": _reward_spec_dependents,
    "valuation": _none,
    "selection": _none,
    "study": _none,
    "score_set": _score_set_dependents,
    "curation": _none,
    "warmup_run": _warmup_run_dependents,
    "evaluation": _none,
}


# --- rows (and the blob prefixes they leave) --------------------------------------------------


def _delete_where(session: Session, table: Any, *where: Any) -> None:
    session.execute(delete(table).where(*where).execution_options(synchronize_session="fetch"))


def _valuations(session: Session, ids: list[str]) -> list[str]:
    return jobs.delete_resources(
        session,
        Valuation,
        ids,
        parts=(Score.valuation_id, Sample.valuation_id, Selection.valuation_id),
        blob_prefix=lambda i: f"scores/{i}",  # .jsonl and -hist.png (ids have one length)
    )


def _studies(session: Session, ids: list[str]) -> list[str]:
    return jobs.delete_resources(session, Study, ids, blob_prefix=lambda i: f"studies/{i}/")


def _score_sets(session: Session, ids: list[str]) -> list[str]:
    return jobs.delete_resources(session, ScoreSet, ids, blob_prefix=lambda i: f"score_sets/{i}/")


def _curations(session: Session, ids: list[str]) -> list[str]:
    return jobs.delete_resources(session, Curation, ids)


def _evaluations(session: Session, ids: list[str]) -> list[str]:
    return jobs.delete_resources(
        session, Evaluation, ids, blob_prefix=lambda i: f"evaluations/{i}/"
    )


def _selections(session: Session, ids: list[str]) -> list[str]:
    _delete_where(session, Selection, Selection.id.in_(ids))
    return []


def _warmup_runs(session: Session, ids: list[str]) -> list[str]:
    return caches.delete_runs(session, ids)


def _reward_specs(session: Session, ids: list[str]) -> list[str]:
    _delete_where(session, RewardSpec, RewardSpec.id.in_(ids))
    return []


def _models(session: Session, ids: list[str]) -> list[str]:
    trained = list(session.scalars(select(WarmupRun.id).where(WarmupRun.model_id.in_(ids))))
    prefixes = caches.delete_runs(session, trained)
    _delete_where(session, Model, Model.id.in_(ids))
    return prefixes


def _datasets(session: Session, ids: list[str]) -> list[str]:
    session.execute(select(Dataset.id).where(Dataset.id.in_(ids)).with_for_update()).all()
    _delete_where(session, Record, Record.dataset_id.in_(ids))
    _delete_where(session, Dataset, Dataset.id.in_(ids))
    return []


_DELETE: dict[Kind, Callable[[Session, list[str]], list[str]]] = {
    "dataset": _datasets,
    "model": _models,
    "reward_spec": _reward_specs,
    "valuation": _valuations,
    "selection": _selections,
    "study": _studies,
    "score_set": _score_sets,
    "curation": _curations,
    "warmup_run": _warmup_runs,
    "evaluation": _evaluations,
}
