"""Garbage collection of the content-keyed caches: feature sets and Sift-trained warmup runs.

Workers store every expensive artifact under a content key (``workers.tasks.common``) and share
it between the valuations and studies of a tenant that need the same thing. Such an artifact has
no owner; it is kept while something references it and collected, rows and blobs, when the last
referrer goes. :func:`collect` runs at delete time, in the transaction that deletes the referrer
(``service.deletion``), and again in a worker whose job was deleted under it
(``workers.tasks.jobs``): it collects what that worker created after the delete committed. It is
never a periodic sweep, because the delete is the only moment a cache loses a referrer, and
collecting then frees the space at once, with the tenant's own session and blob store.

References (everything in the tenant; *live* means a queued or running job):

- a **warmup run** is kept if it was uploaded (a user's resource, deleted only by
  ``DELETE /v1/warmup-runs/{id}``), if a valuation or study names it (``warmup_run_id``), or if a
  live valuation that has not recorded its run yet values a pool with the run's pool content
  (its worker may be reusing the run right now);
- a **feature set** is kept if its checkpoint's run is kept and a valuation or study on that run
  reads a dataset with the feature set's dataset content (features are keyed by content, so an
  identical upload shares them).

A kept cache whose dataset is being deleted is moved onto a surviving dataset of the same content
(or, for a warmup run's pool, to none). Blobs are deleted after the commit (a failure then leaves
only content-keyed objects, which a later identical artifact reuses as they are).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.db.models import (
    FINISHED_STATUSES,
    Checkpoint,
    Dataset,
    FeatureSet,
    Job,
    Study,
    Valuation,
    WarmupRun,
)
from service.tenancy import session_tenant


@dataclass
class Collected:
    """What :func:`collect` deleted (ids) and the blob prefixes to delete after the commit."""

    warmup_run_ids: list[str] = field(default_factory=list)
    feature_set_ids: list[str] = field(default_factory=list)
    blob_prefixes: list[str] = field(default_factory=list)


def run_prefix(run_id: str, *, origin: str, content_key: str) -> str:
    """Where a run's checkpoint files live: ``uploads/<id>/`` (``service.warmup_runs``) or
    ``warmup/<content key>/`` (``workers.tasks.valuation``)."""
    return f"uploads/{run_id}/" if origin == "upload" else f"warmup/{content_key}/"


def collect(session: Session, *, leaving: Collection[str] = ()) -> Collected:
    """Delete the tenant's feature sets and Sift-trained warmup runs nothing references, treating
    the datasets in ``leaving`` as deleted (their rows go after this, in the same transaction).

    Run it after the referrers being deleted are gone (flushed). The session must act for a
    tenant: a cache is shared within a tenant only, and its blobs live under that tenant's prefix.
    """
    if session_tenant(session) is None:
        raise RuntimeError("caches are collected for one tenant: the session acts for none")
    session.flush()
    content = dict(session.execute(select(Dataset.id, Dataset.content_hash)).all())
    surviving: dict[str, str] = {}
    for dataset_id, digest in sorted(content.items()):
        if dataset_id not in leaving:
            surviving.setdefault(digest, dataset_id)

    used: dict[str, set[str]] = defaultdict(set)  # run id -> content of the datasets read on it
    pending_pools: set[str] = set()  # pool content of live valuations with no run recorded yet
    pending: set[str] = set()  # everything those valuations read
    valuations = session.execute(
        select(
            Valuation.warmup_run_id,
            Valuation.pool_dataset_id,
            Valuation.probe_dataset_id,
            Job.status,
        ).join(Job, Job.id == Valuation.job_id)
    )
    for recorded, pool_id, probe_id, status in valuations:
        read = {content[d] for d in (pool_id, probe_id) if d in content}
        if recorded is not None:
            used[recorded] |= read
        elif status not in FINISHED_STATUSES:
            pending_pools.add(content.get(pool_id, ""))
            pending |= read
    for studied, eval_id, probe_sets in session.execute(
        select(Study.warmup_run_id, Study.eval_dataset_id, Study.probe_sets)
    ):
        ids = [eval_id, *(p["dataset_id"] for p in probe_sets)]
        used[studied] |= {content[d] for d in ids if d in content}

    out = Collected()
    kept_runs: set[str] = set()
    runs = session.execute(
        select(WarmupRun.id, WarmupRun.origin, WarmupRun.content_key, WarmupRun.pool_dataset_id)
    )
    for run_id, origin, content_key, trained_on in runs:
        pool = content.get(trained_on or "")
        if origin == "warmup" and run_id not in used and pool in pending_pools:
            used[run_id] |= pending  # a live valuation may be reusing it before recording it
        if origin == "upload" or run_id in used:
            kept_runs.add(run_id)
            if trained_on in leaving:
                _move(session, WarmupRun, run_id, pool_dataset_id=surviving.get(pool or ""))
        else:
            out.warmup_run_ids.append(run_id)
            out.blob_prefixes.append(run_prefix(run_id, origin=origin, content_key=content_key))

    run_of = dict(session.execute(select(Checkpoint.id, Checkpoint.warmup_run_id)).all())
    feature_sets = session.execute(
        select(
            FeatureSet.id, FeatureSet.checkpoint_id, FeatureSet.dataset_id, FeatureSet.blob_prefix
        )
    )
    for set_id, checkpoint_id, dataset_id, blob_prefix in feature_sets:
        run_id = run_of.get(checkpoint_id, "")
        digest = content.get(dataset_id, "")
        if run_id in kept_runs and digest in used[run_id]:
            if dataset_id in leaving:  # read by a referrer, so a dataset of this content survives
                _move(session, FeatureSet, set_id, dataset_id=surviving[digest])
        else:
            out.feature_set_ids.append(set_id)
            out.blob_prefixes.append(f"{blob_prefix}/")
    delete_feature_sets(session, out.feature_set_ids)
    delete_runs(session, out.warmup_run_ids)  # their feature sets were collected above
    return out


def _move(
    session: Session, table: type[WarmupRun | FeatureSet], row_id: str, **values: object
) -> None:
    session.execute(
        update(table)
        .where(table.id == row_id)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )


def delete_feature_sets(session: Session, feature_set_ids: list[str]) -> None:
    if feature_set_ids:
        session.execute(
            delete(FeatureSet)
            .where(FeatureSet.id.in_(feature_set_ids))
            .execution_options(synchronize_session="fetch")
        )


def delete_runs(session: Session, run_ids: list[str]) -> list[str]:
    """Delete warmup runs with their checkpoints and every feature set at those; the blob
    prefixes of all of it. The rows are locked first: a worker inserting a feature set at one
    of these checkpoints waits for this transaction, then fails on the foreign key rather than
    leaving a row that points at nothing."""
    if not run_ids:
        return []
    runs = session.execute(
        select(WarmupRun.id, WarmupRun.origin, WarmupRun.content_key)
        .where(WarmupRun.id.in_(run_ids))
        .with_for_update()
    )
    prefixes = [run_prefix(i, origin=origin, content_key=key) for i, origin, key in runs]
    checkpoint_ids = list(
        session.scalars(
            select(Checkpoint.id).where(Checkpoint.warmup_run_id.in_(run_ids)).with_for_update()
        )
    )
    at_checkpoints = session.execute(
        select(FeatureSet.id, FeatureSet.blob_prefix).where(
            FeatureSet.checkpoint_id.in_(checkpoint_ids)
        )
    )
    feature_sets = dict(at_checkpoints.all())
    delete_feature_sets(session, list(feature_sets))
    for table, column in ((Checkpoint, Checkpoint.warmup_run_id), (WarmupRun, WarmupRun.id)):
        session.execute(
            delete(table).where(column.in_(run_ids)).execution_options(synchronize_session="fetch")
        )
    return [f"{p}/" for p in feature_sets.values()] + prefixes
