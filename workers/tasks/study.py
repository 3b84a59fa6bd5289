"""Strategy-study task (seed 001): gradients → RelInf → s_in / s_cross → verdicts and plots.

Each dataset's gradients at each checkpoint (ℓ summed over completion tokens, projected) are a
feature set of kind "sgd_sum" stored under a content key, exactly like a valuation's features.
A second study on the same checkpoints and evaluation set therefore computes only its new
probe sets, and a study whose worker died resumes from the sets it had stored. Pairing by
``metadata[pair_key]`` happens only when the metrics are computed, so stored gradients stay in
dataset order and serve any pairing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from celery import Task
from safetensors.torch import load as load_safetensors
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.blobs import BlobStore
from service.db.models import Checkpoint as CheckpointRow
from service.db.models import FeatureSet as FeatureSetRow
from service.db.models import Model, Record, Study, WarmupRun
from service.db.session import SessionLocal, for_writes, get_engine
from service.queue import celery_app
from workers.contracts import STUDY_RUN, LoraSpec, StudySettings, StudyTask
from workers.engine import data, features, lora, plots, projection, studies, warmup
from workers.engine.errors import EngineError
from workers.tasks.common import (
    LoadedDataset,
    cached_model,
    feature_key,
    find_or_create_feature_set,
    load_dataset,
    shard_key,
    tenant_blobs,
)
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked

log = logging.getLogger(__name__)

FEATURE_KIND = "sgd_sum"
STORAGE_DTYPE = "float32"
"""Summed-loss gradients grow with the response length; float16 could overflow, and a
study's feature sets are small."""


@dataclass(frozen=True)
class StudyCheckpoint:
    row_id: str
    epoch: int
    step: int
    learning_rate: float
    adapter_blob_key: str


class StudyContext:
    """Everything the study task reads from the database, once."""

    def __init__(self, study_id: str) -> None:
        with SessionLocal() as session:
            study = session.get(Study, study_id)
            if study is None:
                raise LookupError(study_id)
            session.info["tenant_id"] = study.tenant_id  # what it names must be its own
            self.study_id = study_id
            self.name: str | None = study.name
            self.job = JobTracker(study.job_id)
            self.settings = StudySettings.model_validate(study.settings)
            self.eval_dataset_id: str = study.eval_dataset_id
            self.probe_sets: list[tuple[str, str]] = [
                (p["name"], p["dataset_id"]) for p in study.probe_sets
            ]
            self.pair_key: str = study.pair_key
            self.reference: str | None = study.reference
            self.warmup_run_id: str = study.warmup_run_id
            self.tenant_id: str = study.tenant_id
        self.blobs: BlobStore = tenant_blobs(self.tenant_id)

    def load_run(self) -> None:
        """The checkpoints, their model and LoRA layout (inside the job envelope: a run or
        model deleted meanwhile fails the job with a message)."""
        with SessionLocal() as session:
            run = session.get(WarmupRun, self.warmup_run_id)
            if run is None:
                raise EngineError(f"warmup run {self.warmup_run_id} no longer exists")
            self.uploaded = run.origin == "upload"
            model = session.get(Model, run.model_id)
            if model is None:
                raise EngineError(f"model {run.model_id} no longer exists")
            self.model_source: str = model.source
            spec = LoraSpec.model_validate(run.settings["lora"])
            self.lora = lora.LoraSettings(
                r=int(spec.r or 0),
                alpha=float(spec.alpha or 0),
                dropout=spec.dropout,
                target_modules=tuple(spec.target_modules),
            )
            self.checkpoints = [
                StudyCheckpoint(row.id, row.epoch, row.step, row.mean_lr, row.adapter_blob_key)
                for row in session.scalars(
                    select(CheckpointRow)
                    .where(CheckpointRow.warmup_run_id == run.id)
                    .order_by(CheckpointRow.epoch)
                )
            ]

    @property
    def dataset_ids(self) -> list[str]:
        """Evaluation set first, then each probe set's dataset once."""
        return list(dict.fromkeys([self.eval_dataset_id, *(d for _, d in self.probe_sets)]))


def _adapter_state(ctx: StudyContext, ckpt: StudyCheckpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's adapter keyed like ``lora_parameters``; uploads come in PEFT's saved
    naming and are renamed (never unpickled: safetensors only)."""
    state = dict(load_safetensors(ctx.blobs.get_bytes(ckpt.adapter_blob_key)))
    return lora.adapter_state_from_peft(state) if ctx.uploaded else state


def _pair_ids(session: Session, dataset_id: str, pair_key: str) -> dict[str, str]:
    """record_id → pair id (``metadata[pair_key]`` as a string), checked again here: the API
    validated the pairing, but a worker should not trust a row it did not write."""
    rows = session.execute(
        select(Record.record_id, Record.metadata_).where(Record.dataset_id == dataset_id)
    ).all()
    out = {}
    for record_id, metadata in rows:
        value = (metadata or {}).get(pair_key)
        if value is None or isinstance(value, bool):
            raise EngineError(f"record {record_id} of dataset {dataset_id} has no {pair_key!r}")
        out[record_id] = str(value)
    return out


def _features(
    ctx: StudyContext,
    model: Any,
    tokenizer: Any,
    fingerprint: str,
    projector: projection.Projector,
    dataset: LoadedDataset,
    ckpt: StudyCheckpoint,
    adapter_state: dict[str, torch.Tensor],
    ckpt_hash: str,
) -> tuple[features.FeatureSet, bool]:
    """The dataset's summed-loss gradients at ``ckpt`` and whether they were stored already
    (else they are computed and stored now; one shard: study datasets are small)."""
    s = ctx.settings
    provenance = features.Provenance(
        model=fingerprint,
        checkpoint=ckpt_hash,
        projector=projector.spec(),
        seed=projector.seed,
        dim=projector.dim,
        dtype=STORAGE_DTYPE,
        param_order_hash=lora.parameter_order_hash(model),
        kind=FEATURE_KIND,
        max_length=s.max_length,
    )
    n = len(dataset.examples)
    key = feature_key(provenance.to_dict(), dataset.content_hash, n, False)
    prefix = f"features/{key}"
    row_id, complete = find_or_create_feature_set(
        key,
        dataset_id=dataset.id,
        checkpoint_id=ckpt.row_id,
        kind=FEATURE_KIND,
        provenance=provenance.to_dict(),
        dim=provenance.dim,
        dtype=provenance.dtype,
        n_records=n,
        shard_size=n,
        n_shards=1,
        blob_prefix=prefix,
    )
    blob = shard_key(prefix, 0)
    reused = complete or ctx.blobs.exists(blob)
    if not reused:
        tokenized, skipped = data.tokenize_examples(tokenizer, dataset.examples, s.max_length)
        if skipped:
            reasons = "; ".join(f"{x.record_id}: {x.reason}" for x in skipped[:5])
            raise EngineError(
                f"dataset {dataset.id}: {len(skipped)} records have no response tokens left "
                f"to take the loss of ({reasons}); a study needs every pair"
            )
        result = features.featurize(
            model,
            tokenized,
            kind=FEATURE_KIND,
            checkpoint=warmup.Checkpoint(
                ckpt.epoch, ckpt.step, ckpt.learning_rate, adapter_state, {}, {}
            ),
            projector=projector,
            provenance=provenance,
            batch_size=s.batch_size,
            pad_token_id=tokenizer.pad_token_id,
            should_stop=ctx.job.cancel_requested,
        )
        ctx.blobs.put_bytes(blob, result.to_safetensors())
    with SessionLocal() as session:
        row = session.get(FeatureSetRow, row_id)
        if row is None:  # collected: its study was deleted meanwhile
            ctx.job.read()
            raise EngineError(f"feature set {row_id} no longer exists")
        row.status = "complete"
        session.commit()
    ctx.job.advance(n)
    stored = features.FeatureSet.from_safetensors(ctx.blobs.get_bytes(blob))
    stored.provenance.require_compatible(provenance, allow_kind_difference=False)
    return stored, reused


def _aligned(
    feature_set: features.FeatureSet, pairs: dict[str, str], order: list[str]
) -> torch.Tensor:
    """Rows of ``feature_set`` in ``order`` of pair ids."""
    row_of = {pairs[rid]: i for i, rid in enumerate(feature_set.record_ids)}
    missing = [p for p in order if p not in row_of]
    if missing:
        raise EngineError(f"pair ids {missing[:5]} have no record in a probe set")
    return feature_set.features[torch.tensor([row_of[p] for p in order])]


def run(ctx: StudyContext) -> None:
    """Gradients of every dataset at every checkpoint, then the metrics, then the plots."""
    s = ctx.settings
    ctx.load_run()
    if not ctx.checkpoints:
        raise EngineError("the warmup run has no checkpoints")
    ctx.job.stage("load model")
    model, tokenizer, fingerprint = cached_model(ctx.model_source, s.dtype, ctx.lora)
    sizes = [p.numel() for _, p in lora.lora_parameters(model)]
    projector = projection.BlockHadamardProjector(sizes, s.projection.dim, s.projection.seed)
    datasets = {dataset_id: load_dataset(dataset_id) for dataset_id in ctx.dataset_ids}
    with SessionLocal() as session:
        pairs = {d: _pair_ids(session, d, ctx.pair_key) for d in datasets}
    total = len(ctx.checkpoints) * sum(len(d.examples) for d in datasets.values())
    ctx.job.stage("gradients", total=total)
    by_step: dict[str, list[features.FeatureSet]] = {d: [] for d in datasets}
    reused: dict[str, int] = {d: 0 for d in datasets}
    for ckpt in ctx.checkpoints:
        adapter_state = _adapter_state(ctx, ckpt)
        ckpt_hash = features.checkpoint_hash(adapter_state)
        for dataset_id, dataset in datasets.items():
            feature_set, was_stored = _features(
                ctx, model, tokenizer, fingerprint, projector, dataset, ckpt, adapter_state,
                ckpt_hash,
            )  # fmt: skip
            by_step[dataset_id].append(feature_set)
            reused[dataset_id] += was_stored
    for dataset_id, n in reused.items():
        if n:
            ctx.job.note(
                f"reused the stored gradients of dataset {dataset_id} at {n} of "
                f"{len(ctx.checkpoints)} checkpoints"
            )
    ctx.job.stage("metrics")
    eval_sets = by_step[ctx.eval_dataset_id]
    order = [pairs[ctx.eval_dataset_id][rid] for rid in eval_sets[0].record_ids]
    evaluation = [_aligned(f, pairs[ctx.eval_dataset_id], order) for f in eval_sets]
    probes = {
        name: [_aligned(f, pairs[dataset_id], order) for f in by_step[dataset_id]]
        for name, dataset_id in ctx.probe_sets
    }
    steps = [c.step for c in ctx.checkpoints]
    result = studies.run_study(
        evaluation,
        probes,
        steps,
        order,
        reference=ctx.reference,
        bootstrap=s.bootstrap,
        confidence=s.confidence,
        seed=s.seed,
    )
    ctx.job.stage("plots")
    figure = plots.study_figure(result, title=ctx.name, confidence=s.confidence)
    keys = {fmt: f"studies/{ctx.study_id}/plot.{fmt}" for fmt in ("png", "svg")}
    for fmt, key in keys.items():
        ctx.blobs.put_bytes(key, plots.render(figure, fmt))  # type: ignore[arg-type]
    report = result.to_dict()
    report["checkpoints"] = [
        {"epoch": c.epoch, "step": c.step, "learning_rate": c.learning_rate}
        for c in ctx.checkpoints
    ]
    report["metric_definitions"] = {
        "RelInf(z', z)": "<∇ℓ(z'), ∇ℓ(z)> / <∇ℓ(z), ∇ℓ(z)>, ℓ summed over completion tokens",
        "s_in": "mean over pairs i of RelInf(z'_i, z_i) (seed 001 eq. 4)",
        "s_cross": "mean over pairs i of the mean over j ≠ i of RelInf(z'_i, z_j) (eq. 5)",
        "std": "standard deviation of the per-pair values",
        "low/high": f"{s.confidence:.0%} percentile bootstrap interval of the mean "
        f"({s.bootstrap} resamples of the pairs, seed {s.seed})",
    }
    report["provenance"] = {
        k: v for k, v in eval_sets[0].provenance.to_dict().items() if k != "checkpoint"
    }
    with SessionLocal(bind=for_writes(get_engine())) as session:
        study = session.get(Study, ctx.study_id, with_for_update=True, populate_existing=True)
        if study is None:  # deleted meanwhile: its plots must not stay behind
            ctx.blobs.delete_prefix(f"studies/{ctx.study_id}/")
            raise ResourceDeleted(f"study {ctx.study_id} was deleted")
        study.result = report
        study.plot_png_key, study.plot_svg_key = keys["png"], keys["svg"]
        session.commit()
    ctx.job.succeed()


@celery_app.task(name=STUDY_RUN, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_task(self: Task, study_id: str) -> None:
    """A whole study; re-delivered after a crash, it reuses every feature set it stored."""
    try:
        ctx = StudyContext(StudyTask(study_id=study_id).study_id)
    except LookupError:
        log.warning("study %s does not exist; dropping task", study_id)
        return
    run_tracked(ctx.job, lambda: run(ctx), task=self)


__all__ = ["run_task"]
