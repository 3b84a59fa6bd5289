"""Valuation tasks: warmup → features → scores, each step idempotent and resumable.

Every expensive artifact is stored under a *content key* (a hash of everything that determines
it), so a re-delivered task, a restarted job or a second valuation on the same pool finds what
was already computed and skips it:

- warmup checkpoints:  ``warmup/<key>/epoch-NNN/{adapter,optimizer}.safetensors``, and the
                       run's training curve plotted: ``warmup/<key>/curve.{png,svg}`` (with
                       the held-out loss of each held-out set measured on the run)
- feature shards:      ``features/<key>/shard-NNNNN.safetensors`` (one per pool record range)
- scores:              ``scores/<valuation id>.jsonl`` plus the ``scores`` table

A shard is written once, atomically (the blob store guarantees it); a shard that exists is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import torch
from celery import Task
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from service.blobs import BlobStore
from service.config import get_settings
from service.db.models import Checkpoint as CheckpointRow
from service.db.models import Dataset, Model, Score, Valuation, WarmupRun
from service.db.models import FeatureSet as FeatureSetRow
from service.db.models import RewardSpec as RewardSpecRow
from service.db.models import Sample as SampleRow
from service.db.session import SessionLocal, for_writes, get_engine
from service.queue import celery_app, enqueue
from service.tenant_secrets import service as tenant_secrets
from workers.contracts import (
    GPU_QUEUE,
    REWARD_NEEDS_LABEL,
    VALUATION_FEATURIZE,
    VALUATION_FEATURIZE_SHARD,
    VALUATION_SCORE,
    AssistEndpoint,
    FeatureShardTask,
    ValuationSettings,
    ValuationTask,
)
from workers.engine import (
    assist,
    data,
    datainf,
    evaluation,
    features,
    http,
    influence,
    lora,
    methods,
    models,
    nice,
    plots,
    projection,
    rewards,
    summaries,
    warmup,
)
from workers.engine.errors import Cancelled, EngineError
from workers.engine.valuation_method import Projection, ScoringInput, ValuationMethod
from workers.tasks.common import (
    LoadedDataset,
    cached_model,
    compute_device,
    content_key,
    example_of,
    feature_key,
    find_or_create_feature_set,
    load_dataset,
    load_model,
    records_in_order,
    reward_spec_to_run,
    shard_key,
    tenant_blobs,
)
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked

log = logging.getLogger(__name__)

FEATURIZE_STAGE = "featurize"

TINY_LORA = {"r": 8, "alpha": 32.0}
LESS_LORA = {"r": 128, "alpha": 512.0}
TINY_DIM_PER_LAYER = 512  # builtin LoRA tensors (r=8) kept whole: exact DataInf
DIM_PER_LAYER = 1024  # per LoRA tensor: the width of 2048 per module (docs/benchmarks.md)


def resolve_settings(requested: dict[str, Any], source: str) -> ValuationSettings:
    """Fill the model-dependent defaults left as ``None`` by the user: LoRA rank and alpha,
    DataInf's per-layer width."""
    settings = ValuationSettings.model_validate(requested)
    tiny = source == models.TINY_LLAMA
    defaults = TINY_LORA if tiny else LESS_LORA
    r = settings.lora.r if settings.lora.r is not None else defaults["r"]
    alpha = settings.lora.alpha if settings.lora.alpha is not None else 4.0 * r
    dim_per_layer = settings.datainf.dim_per_layer or (
        TINY_DIM_PER_LAYER if tiny else DIM_PER_LAYER
    )
    return settings.model_copy(
        update={
            "lora": settings.lora.model_copy(update={"r": r, "alpha": alpha}),
            "datainf": settings.datainf.model_copy(update={"dim_per_layer": dim_per_layer}),
        }
    )


class Context:
    """Everything one valuation task needs; datasets are read only when a stage asks for them."""

    def __init__(self, valuation_id: str) -> None:
        with SessionLocal() as session:
            valuation = session.get(Valuation, valuation_id)
            if valuation is None:
                raise LookupError(valuation_id)
            session.info["tenant_id"] = valuation.tenant_id  # what it names must be its own
            model = session.get(Model, valuation.model_id)
            if model is None:
                raise EngineError(f"model {valuation.model_id} no longer exists")
            self.settings = resolve_settings(valuation.settings, model.source)
            valuation.settings = self.settings.model_dump()
            session.commit()
            self.valuation_id = valuation_id
            self.tenant_id: str = valuation.tenant_id
            self.job = JobTracker(valuation.job_id)
            self.method: ValuationMethod = methods.get(valuation.method)
            """What the method reads and how it scores (``workers.engine.valuation_method``)."""
            self.model_source: str = model.source
            self.model_id: str = model.id
            self.pool_dataset_id: str = valuation.pool_dataset_id
            self.probe_dataset_id: str | None = valuation.probe_dataset_id
            """None for a method without probes (self-influence)."""
            self.assist_dataset_id: str | None = valuation.assist_dataset_id
            self.warmup_eval_dataset_id: str | None = valuation.warmup_eval_dataset_id
            self.reward_spec: dict[str, Any] | None = None
            """As stored (sealed headers shown as names): what content keys hash."""
            self.reward_to_run: dict[str, Any] | None = None
            """With its sealed headers opened: what the reward is computed with."""
            if valuation.reward_spec_id is not None:
                spec = session.get(RewardSpecRow, valuation.reward_spec_id)
                if spec is None:
                    raise EngineError(f"reward spec {valuation.reward_spec_id} no longer exists")
                self.reward_spec = dict(spec.spec)
                self.reward_to_run = reward_spec_to_run(spec)
        self.blobs: BlobStore = tenant_blobs(self.tenant_id)

    @cached_property
    def pool(self) -> LoadedDataset:
        return load_dataset(self.pool_dataset_id)

    @cached_property
    def probes(self) -> LoadedDataset:
        if self.probe_dataset_id is None:
            raise EngineError(f"method {self.method.name!r} has no probes")
        return load_dataset(self.probe_dataset_id)

    @cached_property
    def warmup_eval(self) -> LoadedDataset | None:
        """The warmup's held-out set, if the valuation names one."""
        if self.warmup_eval_dataset_id is None:
            return None
        return load_dataset(self.warmup_eval_dataset_id)

    @cached_property
    def assisted_responses(self) -> tuple[str, dict[str, list[str]]] | None:
        """NICE-AMC's responses by probe id and a hash of where they came from (the assist
        dataset's content, or the fetched texts); None when the checkpoint samples its own."""
        if self.assist_dataset_id:
            return _assisted_responses(self.assist_dataset_id)
        endpoint = self.settings.nice.assist_endpoint
        if endpoint is not None and self.method.probe_features == "policy":
            return _endpoint_responses(self, endpoint)
        return None

    @property
    def uses_assist(self) -> bool:
        return bool(self.assist_dataset_id) or self.settings.nice.assist_endpoint is not None

    @cached_property
    def probe_prompts(self) -> tuple[str, list[nice.ProbePrompt]]:
        """NICE's view of the probes (prompt-only records allowed) and the dataset's hash."""
        if self.probe_dataset_id is None:
            raise EngineError(f"method {self.method.name!r} has no probes")
        with SessionLocal() as session:
            dataset = session.get(Dataset, self.probe_dataset_id)
            if dataset is None:
                raise EngineError(f"dataset {self.probe_dataset_id} no longer exists")
            rows = session.scalars(records_in_order(self.probe_dataset_id)).all()
            prompts = []
            for row in rows:
                messages = tuple({"role": m["role"], "content": m["content"]} for m in row.messages)
                metadata = dict(row.metadata_ or {})
                prompts.append(
                    nice.ProbePrompt(
                        record_id=row.record_id,
                        messages=messages,
                        subtask=row.subtask,
                        label=rewards.record_label(messages, metadata),
                        metadata=metadata,
                    )
                )
            return dataset.content_hash, prompts


def _load_context(valuation_id: str) -> Context | None:
    try:
        return Context(valuation_id)
    except (LookupError, StaleDataError):  # StaleDataError: deleted while being read
        log.warning("valuation %s does not exist; dropping task", valuation_id)
        return None


def _run_job(
    task: Task,
    valuation_id: str,
    body: Callable[[Context], None],
    *,
    already_running: bool = False,
) -> None:
    """Run ``body`` for a valuation inside the job envelope (``jobs.run_tracked``)."""
    ctx = _load_context(valuation_id)
    if ctx is not None:
        run_tracked(ctx.job, lambda: body(ctx), already_running=already_running, task=task)


# --- stage 1: warmup and features (GPU queue) -------------------------------------------------


def _writing() -> Session:
    """A session that writes after it reads (SQLite: takes the write lock first)."""
    return SessionLocal(bind=for_writes(get_engine()))


def _valuation_for_write(session: Session, valuation_id: str) -> Valuation:
    """The valuation row, locked until the session commits: a ``DELETE`` of it waits, or went
    first and this raises ``ResourceDeleted`` (its worker writes nothing more)."""
    valuation = session.get(Valuation, valuation_id, with_for_update=True, populate_existing=True)
    if valuation is None:
        raise ResourceDeleted(f"valuation {valuation_id} was deleted")
    return valuation


def _record_skipped(
    ctx: Context,
    skipped: dict[str, list[data.SkippedExample]],
    truncated: dict[str, list[data.TruncatedResponse]],
) -> None:
    """Records left out (no response token fits in max_length), then records kept with their
    response cut part-way (``"cut": "response"``; the API reads those as ``truncated``)."""
    with _writing() as session:
        valuation = _valuation_for_write(session, ctx.valuation_id)
        valuation.skipped = [
            {"record_id": s.record_id, "dataset": name, "reason": s.reason}
            for name, items in skipped.items()
            for s in items
        ] + [
            {
                "record_id": t.record_id,
                "dataset": name,
                "cut": "response",
                "response_tokens": t.response_tokens,
                "response_tokens_kept": t.response_tokens_kept,
            }
            for name, items in truncated.items()
            for t in items
        ]
        session.commit()


def warmup_plot_key(content_key: str, fmt: str) -> str:
    """Where a Sift-trained run's curve figure is stored (under the run's own prefix, so it
    goes with the run); ``service.warmup_runs.service.plot_key`` reads it."""
    return f"warmup/{content_key}/curve.{fmt}"


def _warmup_checkpoints(
    ctx: Context, model: Any, tokenizer: Any, pool: list[data.TokenizedExample], fingerprint: str
) -> list[tuple[str, warmup.Checkpoint]]:
    """Train (or reuse) the warmup LoRA run; returns (checkpoint row id, checkpoint) per epoch.

    The run's training curve (loss per step, mean per epoch) is stored on its row at every
    checkpoint and plotted once it is complete. A schedule that cannot learn (one optimizer
    step, at learning rate 0) fails the job before anything is trained or stored."""
    s = ctx.settings
    warm = warmup.WarmupSettings(**s.warmup.model_dump())
    subset = warmup.select_warmup_subset(len(pool), warm.fraction, warm.seed)
    try:
        warmup.check_schedule_learns(len(subset), warm)
    except EngineError as exc:
        raise EngineError(
            f"settings.warmup: {exc} (the warmup trains on fraction {warm.fraction} of the "
            f"{len(pool)} pool records that fit in max_length={s.max_length})"
        ) from None
    prompt = {} if s.system_prompt is None else {"system_prompt": s.system_prompt}
    key = content_key(  # the system prompt only when set: keys of earlier runs stay valid
        model=fingerprint,
        pool=ctx.pool.content_hash,
        warmup=s.warmup.model_dump(),
        lora=s.lora.model_dump(),
        max_length=s.max_length,
        dtype=s.dtype,
        **prompt,
    )
    with SessionLocal() as session:
        run = session.scalar(select(WarmupRun).where(WarmupRun.content_key == key))
        if run is not None and run.status == "complete":
            rows = session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.warmup_run_id == run.id)
                .order_by(CheckpointRow.epoch)
            ).all()
            ctx.job.note(f"reused warmup run {run.id} ({len(rows)} checkpoints)")
            _set_warmup_run(ctx.valuation_id, run.id)
            return [
                (
                    row.id,
                    warmup.checkpoint_from_safetensors(
                        ctx.blobs.get_bytes(row.adapter_blob_key),
                        ctx.blobs.get_bytes(row.optimizer_blob_key),
                    ),
                )
                for row in rows
            ]
        if run is None:
            run = WarmupRun(
                content_key=key,
                model_id=ctx.model_id,
                pool_dataset_id=ctx.pool.id,
                settings={"warmup": s.warmup.model_dump(), "lora": s.lora.model_dump()},
                status="running",
            )
            session.add(run)
            try:
                session.commit()
            except IntegrityError:  # another worker created it first; train our own copy
                session.rollback()
                run = session.scalar(select(WarmupRun).where(WarmupRun.content_key == key))
        assert run is not None
        run_id = run.id
    _set_warmup_run(ctx.valuation_id, run_id)

    train = [pool[i] for i in subset]
    ctx.job.stage("warmup", total=warm.epochs)
    saved: list[tuple[str, warmup.Checkpoint]] = []
    curve = warmup.LossCurve()

    def on_checkpoint(ckpt: warmup.Checkpoint) -> None:
        ctx.job.read()  # deleted meanwhile: ResourceDeleted, before writing its files
        curve.end_epoch(ckpt.epoch, ckpt.step)
        adapter_bytes, optimizer_bytes = warmup.checkpoint_to_safetensors(ckpt)
        prefix = f"warmup/{key}/epoch-{ckpt.epoch:03d}"
        ctx.blobs.put_bytes(f"{prefix}/adapter.safetensors", adapter_bytes)
        ctx.blobs.put_bytes(f"{prefix}/optimizer.safetensors", optimizer_bytes)
        with SessionLocal() as session:
            session.execute(
                delete(CheckpointRow).where(
                    CheckpointRow.warmup_run_id == run_id, CheckpointRow.epoch == ckpt.epoch
                )
            )
            row = CheckpointRow(
                warmup_run_id=run_id,
                epoch=ckpt.epoch,
                step=ckpt.step,
                mean_lr=ckpt.mean_lr,
                adapter_blob_key=f"{prefix}/adapter.safetensors",
                optimizer_blob_key=f"{prefix}/optimizer.safetensors",
                content_hash=features.checkpoint_hash(ckpt.adapter_state),
            )
            session.execute(  # before the add: no autoflush of the row outside the try
                update(WarmupRun).where(WarmupRun.id == run_id).values(curve=curve.to_dict())
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # the run was deleted (with its valuation) meanwhile
                session.rollback()
                if session.get(WarmupRun, run_id) is not None:
                    raise
                ctx.blobs.delete_prefix(f"{prefix}/")  # its DELETE may have missed these
                ctx.job.read()
                raise EngineError(f"warmup run {run_id} was deleted while it was trained") from None
            saved.append((row.id, ckpt))
        ctx.job.advance(1)

    warmup.warmup(
        model,
        train,
        warm,
        pad_token_id=tokenizer.pad_token_id,
        on_checkpoint=on_checkpoint,
        should_stop=ctx.job.cancel_requested,
        on_step=curve.on_step,
    )
    figure = plots.warmup_figure(curve.to_dict(), title=f"Warmup run {run_id}")
    for fmt in ("png", "svg"):  # before "complete": a complete run with a curve has its plot
        ctx.blobs.put_bytes(warmup_plot_key(key, fmt), plots.render(figure, fmt))
    with SessionLocal() as session:
        run_row = session.get(WarmupRun, run_id)
        if run_row is None:  # deleted with (or after) its valuation
            for fmt in ("png", "svg"):  # its DELETE may have missed these
                ctx.blobs.delete_prefix(warmup_plot_key(key, fmt))
            ctx.job.read()
            raise EngineError(f"warmup run {run_id} was deleted while it was trained")
        run_row.status, run_row.n_train = "complete", len(train)
        run_row.curve = curve.to_dict()
        session.commit()
    return saved


def _set_warmup_run(valuation_id: str, run_id: str) -> None:
    with _writing() as session:
        valuation = _valuation_for_write(session, valuation_id)
        valuation.warmup_run_id = run_id
        session.commit()


def _heldout_entry(curve: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any] | None:
    """The curve's held-out entry for this (content, max_length, system prompt), if any."""
    for entry in curve.get("heldout") or []:
        if all(entry.get(k) == v for k, v in identity.items()):
            return dict(entry)
    return None


def _heldout_curve(
    ctx: Context,
    model: Any,
    tokenizer: Any,
    saved: Sequence[tuple[str, warmup.Checkpoint]],
    examples: Sequence[data.TokenizedExample],
    n_skipped: int,
) -> None:
    """The held-out loss at every checkpoint of the valuation's (complete) warmup run, stored
    on the run's curve under ``heldout`` and plotted with it. Runs are shared by content, so
    the entry is keyed by the held-out set's content, max_length and system prompt: one that
    is already there is reused, not computed again."""
    s, dataset = ctx.settings, ctx.warmup_eval
    if dataset is None:
        return
    identity = {
        "content_hash": dataset.content_hash,
        "max_length": s.max_length,
        "system_prompt": s.system_prompt,
    }
    with SessionLocal() as session:
        run_id = session.scalar(
            select(Valuation.warmup_run_id).where(Valuation.id == ctx.valuation_id)
        )
        run = session.get(WarmupRun, run_id) if run_id is not None else None
        if run is None:
            ctx.job.read()
            raise EngineError(f"the warmup run of valuation {ctx.valuation_id} no longer exists")
        curve = run.curve
    if curve is None:
        ctx.job.note(
            f"warmup run {run_id} was trained before curves were recorded: no held-out loss "
            f"of dataset {dataset.id} is stored on it"
        )
        return
    if _heldout_entry(curve, identity) is not None:
        ctx.job.note(f"reused the held-out loss of dataset {dataset.id} on warmup run {run_id}")
        return
    ctx.job.stage("held-out loss")
    epochs = evaluation.heldout_loss_per_epoch(
        model,
        examples,
        [ckpt for _, ckpt in saved],
        batch_size=min(s.batch_size, _BATCH_SIZE_THAT_FITS.get(ctx.model_source, s.batch_size)),
        pad_token_id=tokenizer.pad_token_id,
        should_stop=ctx.job.cancel_requested,
    )
    entry = {
        "dataset_id": dataset.id,
        **identity,
        "n_records": len(examples),
        "n_skipped": n_skipped,
        "epochs": epochs,
    }
    with _writing() as session:  # read-modify-write of the shared curve: the row is locked
        row = session.get(WarmupRun, run_id, with_for_update=True, populate_existing=True)
        if row is None or row.curve is None:
            ctx.job.read()
            raise EngineError(
                f"warmup run {run_id} was deleted while its held-out loss was computed"
            )
        if _heldout_entry(row.curve, identity) is None:  # else a concurrent valuation added it
            curve = {**row.curve, "heldout": [*(row.curve.get("heldout") or []), entry]}
            figure = plots.warmup_figure(curve, title=f"Warmup run {run_id}")
            for fmt in ("png", "svg"):  # under the lock: the last figure written is the last curve
                ctx.blobs.put_bytes(
                    warmup_plot_key(row.content_key, fmt), plots.render(figure, fmt)
                )
            row.curve = curve
            session.commit()
    ctx.job.note(
        f"held-out loss of dataset {dataset.id} ({len(examples)} records) at the "
        f"{len(epochs)} checkpoints of warmup run {run_id}: "
        + ", ".join(f"epoch {e['epoch']} {e['loss']:.4g}" for e in epochs)
    )


def _policy_inputs(
    reward_spec: dict[str, Any], settings: ValuationSettings, assist_hash: str | None
) -> dict[str, Any]:
    """What a NICE probe feature set depends on beyond its provenance: the reward, and either
    the sampling settings or (NICE-AMC) the assisted responses."""
    nice_settings = settings.nice.model_dump()
    nice_settings.pop("generation_batch_size")  # a memory knob: samples do not depend on it
    if assist_hash is not None:
        weighting = settings.nice.weighting
        return {"reward": reward_spec, "assisted": assist_hash, "weighting": weighting}
    return {"reward": reward_spec, "nice": nice_settings}


def _probe_shard_size(n_probes: int) -> int:
    return max(n_probes, 1)  # probes are few: one shard


def _shards(records: Sequence[data.Example], size: int) -> list[list[data.Example]]:
    return [list(records[i : i + size]) for i in range(0, len(records), size)] or [[]]


def _projector(model: Any, settings: ValuationSettings, layout: Projection) -> projection.Projector:
    """The production Π of a method's ``projection``: one block SRHT over the model's LoRA
    tensors (see ``projection``), or one per LoRA weight tensor, side by side."""
    if layout == "layerwise":
        return datainf.layerwise_projector(
            model, settings.datainf.dim_per_layer, settings.projection.seed
        )
    sizes = [p.numel() for _, p in lora.lora_parameters(model)]
    return projection.BlockHadamardProjector(
        sizes, settings.projection.dim, settings.projection.seed
    )


def _provenance(
    s: ValuationSettings,
    model: Any,
    projector: projection.Projector,
    checkpoint_hash: str,
    fingerprint: str,
    kind: str,
) -> features.Provenance:
    """What this valuation's features of ``kind`` at one checkpoint are computed from."""
    return features.Provenance(
        model=fingerprint,
        checkpoint=checkpoint_hash,
        projector=projector.spec(),
        seed=projector.seed,
        dim=projector.dim,
        dtype=s.dtype if s.dtype == "float32" else "float16",
        param_order_hash=lora.parameter_order_hash(model),
        kind=kind,
        max_length=s.max_length,
        system_prompt=s.system_prompt,
    )


def _ensure_feature_set(
    ctx: Context,
    *,
    dataset: LoadedDataset,
    kind: str,
    model: Any,
    checkpoint_row_id: str,
    ckpt: warmup.Checkpoint,
    ckpt_hash: str,
    fingerprint: str,
    shard_size: int,
) -> tuple[str, list[int]]:
    """Find or create the feature set for ``kind`` features of ``dataset`` at one checkpoint.

    Returns its row id and the shard indices still to compute (those not in the blob store);
    finished shards count as progress at once.
    """
    s = ctx.settings
    projector = _projector(model, s, ctx.method.projection)
    provenance = _provenance(s, model, projector, ckpt_hash, fingerprint, kind)
    key = feature_key(
        provenance.to_dict(), dataset.content_hash, shard_size, s.adam_bias_correction
    )
    prefix = f"features/{key}"
    n_shards = len(_shards(dataset.examples, shard_size))
    row_id, complete = find_or_create_feature_set(
        key,
        dataset_id=dataset.id,
        checkpoint_id=checkpoint_row_id,
        kind=kind,
        provenance=provenance.to_dict(),
        dim=provenance.dim,
        dtype=provenance.dtype,
        n_records=len(dataset.examples),
        shard_size=shard_size,
        n_shards=n_shards,
        blob_prefix=prefix,
    )
    if complete:
        ctx.job.note(
            f"reused {kind} features of dataset {dataset.id} at epoch {ckpt.epoch} "
            f"(feature set {row_id})"
        )
        ctx.job.advance(len(dataset.examples))
        return row_id, []
    done = set(ctx.blobs.list_keys(prefix + "/"))
    missing = [i for i in range(n_shards) if shard_key(prefix, i) not in done]
    sizes = [len(shard) for shard in _shards(dataset.examples, shard_size)]
    ctx.job.advance(sum(sizes[i] for i in range(n_shards) if i not in set(missing)))
    return row_id, missing


def featurize_valuation(ctx: Context) -> None:
    """Warmup, then fan featurization out: one task per missing shard of every feature set.

    Which features, at which checkpoints, is the method's (``ctx.method``). Policy probe
    features (NICE: sampling, rewards, policy gradients) are computed here first, with the
    model this task already holds: probes are few, and the pool shards then need nothing else
    to hand over to scoring.
    """
    s = ctx.settings
    probe_kind = ctx.method.probe_features
    ctx.job.stage("load model")
    model, tokenizer = load_model(ctx.model_source, s.dtype)
    fingerprint = models.model_fingerprint(ctx.model_source, model)

    ctx.job.stage("tokenize")
    pool_tok, pool_skipped = data.tokenize_examples(
        tokenizer, ctx.pool.examples, s.max_length, system_prompt=s.system_prompt
    )
    truncated = {"pool": data.truncated_responses(pool_tok)}
    probe_skipped: list[data.SkippedExample] = []
    if probe_kind is None:
        n_probes, n_probe_records = 0, 0
    elif probe_kind == "policy":
        probe_hash, probe_prompts, probe_skipped = _nice_probes(ctx, tokenizer)
        n_probes, n_probe_records = len(probe_prompts), len(ctx.probe_prompts[1])
    else:
        probe_tok, probe_skipped = data.tokenize_examples(
            tokenizer, ctx.probes.examples, s.max_length, system_prompt=s.system_prompt
        )
        n_probes, n_probe_records = len(probe_tok), len(ctx.probes.examples)
        truncated["probes"] = data.truncated_responses(probe_tok)
    skipped = {"pool": pool_skipped, "probes": probe_skipped}
    heldout_tok: list[data.TokenizedExample] = []
    if ctx.warmup_eval is not None:  # the warmup's held-out set, valued like the probes
        heldout_tok, skipped["warmup_eval"] = data.tokenize_examples(
            tokenizer, ctx.warmup_eval.examples, s.max_length, system_prompt=s.system_prompt
        )
        truncated["warmup_eval"] = data.truncated_responses(heldout_tok)
    _record_skipped(ctx, skipped, truncated)
    if heldout_tok and (skipped["warmup_eval"] or truncated["warmup_eval"]):
        ctx.job.note(
            f"warmup_eval: left out {len(skipped['warmup_eval'])} held-out records that did not "
            f"fit in max_length={s.max_length} and cut the response of "
            f"{len(truncated['warmup_eval'])} part-way (see 'skipped' and 'truncated')"
        )
    if ctx.warmup_eval is not None and not heldout_tok:
        raise EngineError(
            f"no record of the warmup_eval dataset {ctx.warmup_eval.id} fits in "
            f"max_length={s.max_length} (see 'skipped')"
        )
    if truncated["pool"] or truncated.get("probes"):
        ctx.job.note(
            f"max_length={s.max_length} cut the response of {len(truncated['pool'])} pool and "
            f"{len(truncated.get('probes', []))} probe records part-way (see 'truncated')"
        )
    if not pool_tok:
        raise EngineError(
            f"every pool record's response was truncated away at max_length={s.max_length}"
        )
    if not n_probes and probe_kind is not None:
        raise EngineError(f"no probe fits in max_length={s.max_length} (see 'skipped')")
    if pool_skipped or probe_skipped:
        ctx.job.note(
            f"skipped {len(pool_skipped)} pool and {len(probe_skipped)} probe records that did "
            f"not fit in max_length={s.max_length} (see 'skipped')"
        )

    peft_model = lora.attach_lora(model, _lora_settings(s))
    saved = _warmup_checkpoints(ctx, peft_model, tokenizer, pool_tok, fingerprint)
    if ctx.warmup_eval is not None:
        _heldout_curve(ctx, peft_model, tokenizer, saved, heldout_tok, len(skipped["warmup_eval"]))
    checkpoints = ctx.method.checkpoints_used(saved)

    total = len(checkpoints) * (len(ctx.pool.examples) + n_probe_records)
    ctx.job.stage(FEATURIZE_STAGE, total=total)
    feature_set_ids: list[str] = []
    todo: list[tuple[str, int]] = []
    for row_id, ckpt in checkpoints:
        ckpt_hash = features.checkpoint_hash(ckpt.adapter_state)  # once per checkpoint
        if probe_kind == "policy":
            feature_set_ids.append(
                _policy_feature_set(
                    ctx,
                    model=peft_model,
                    tokenizer=tokenizer,
                    checkpoint_row_id=row_id,
                    ckpt=ckpt,
                    ckpt_hash=ckpt_hash,
                    fingerprint=fingerprint,
                    probe_hash=probe_hash,
                    probes=probe_prompts,
                    n_records=n_probe_records,
                )
            )
        sets = [(ctx.pool, ctx.method.pool_features, s.shard_size)]
        if probe_kind == "sgd":  # policy ones: made above
            sets.append((ctx.probes, probe_kind, _probe_shard_size(len(ctx.probes.examples))))
        for dataset, kind, shard_size in sets:
            set_id, missing = _ensure_feature_set(
                ctx,
                dataset=dataset,
                kind=kind,
                model=peft_model,
                checkpoint_row_id=row_id,
                ckpt=ckpt,
                ckpt_hash=ckpt_hash,
                fingerprint=fingerprint,
                shard_size=shard_size,
            )
            feature_set_ids.append(set_id)
            todo += [(set_id, index) for index in missing]
    del model, peft_model  # shard tasks load their own (cached per worker process)
    if not todo:
        _finish_featurize(ctx, feature_set_ids)
        return
    ctx.job.note(f"featurizing {len(todo)} shards on the {GPU_QUEUE} queue")
    for set_id, index in todo:
        enqueue(
            VALUATION_FEATURIZE_SHARD,
            FeatureShardTask(
                valuation_id=ctx.valuation_id,
                feature_set_id=set_id,
                shard_index=index,
                feature_set_ids=feature_set_ids,
            ),
            job_id=ctx.job.job_id,
        )


# --- NICE probes: sample, reward, policy gradient ----------------------------------------------


def _nice_probes(
    ctx: Context, tokenizer: Any
) -> tuple[str, list[nice.ProbePrompt], list[data.SkippedExample]]:
    """Probes whose prompt leaves room for ``max_new_tokens`` within ``max_length``; a reward
    that compares with a label gets only probes that have one (the API checks this too)."""
    s = ctx.settings
    assert ctx.reward_spec is not None
    needs_label = REWARD_NEEDS_LABEL[ctx.reward_spec["kind"]]
    probe_hash, prompts = ctx.probe_prompts
    kept, skipped = [], []
    for probe in prompts:
        room = s.max_length - len(nice.prompt_ids(tokenizer, probe, s.system_prompt))
        if needs_label and probe.label is None:
            raise EngineError(
                f"probe {probe.record_id} has no metadata.label or response to serve as the "
                f"label of a {ctx.reward_spec['kind']!r} reward"
            )
        needed = 1 if ctx.uses_assist else s.nice.max_new_tokens
        if room < needed:
            skipped.append(
                data.SkippedExample(
                    probe.record_id,
                    f"prompt leaves {room} tokens of max_length={s.max_length}, fewer than "
                    f"the {needed} a response needs",
                )
            )
        else:
            kept.append(probe)
    return probe_hash, kept, skipped


def _policy_feature_set(
    ctx: Context,
    *,
    model: Any,
    tokenizer: Any,
    checkpoint_row_id: str,
    ckpt: warmup.Checkpoint,
    ckpt_hash: str,
    fingerprint: str,
    probe_hash: str,
    probes: list[nice.ProbePrompt],
    n_records: int,
) -> str:
    """Compute (or reuse) NICE probe features at one checkpoint; store samples for audit.

    The samples and rewards live next to the features (``samples.jsonl``), so a valuation that
    reuses the features also shows the samples they came from.
    """
    s = ctx.settings
    assert ctx.reward_spec is not None
    assisted = ctx.assisted_responses
    projector = _projector(model, s, ctx.method.projection)
    provenance = _provenance(s, model, projector, ckpt_hash, fingerprint, "policy")
    key = feature_key(
        provenance.to_dict(),
        probe_hash,
        _probe_shard_size(n_records),
        s.adam_bias_correction,
        policy=_policy_inputs(ctx.reward_spec, s, assisted[0] if assisted else None),
    )
    prefix = f"features/{key}"
    samples_key = f"{prefix}/samples.jsonl"
    row_id, _ = find_or_create_feature_set(
        key,
        dataset_id=ctx.probe_dataset_id,
        checkpoint_id=checkpoint_row_id,
        kind="policy",
        provenance=provenance.to_dict(),
        dim=provenance.dim,
        dtype=provenance.dtype,
        n_records=n_records,
        shard_size=_probe_shard_size(n_records),
        n_shards=1,
        blob_prefix=prefix,
    )
    if ctx.blobs.exists(shard_key(prefix, 0)) and ctx.blobs.exists(samples_key):
        ctx.job.note(f"reused NICE probe samples and features at epoch {ckpt.epoch}")
    else:
        lora.load_adapter_state(model, ckpt.adapter_state)
        if assisted is not None:
            samples = nice.assisted_samples(tokenizer, probes, assisted[1], s.system_prompt)
            too_long = [
                f"{x.probe_id}#{x.index}"
                for x in samples
                if len(x.prompt_ids) + len(x.response_ids) > s.max_length
            ]
            if too_long:
                raise EngineError(
                    f"{len(too_long)} assisted responses do not fit in max_length={s.max_length} "
                    f"with their prompt: {too_long[:10]}"
                )
        else:
            settings = nice.SamplingSettings(
                m=s.nice.samples,
                temperature=s.nice.temperature,
                top_k=s.nice.top_k,
                top_p=s.nice.top_p,
                max_new_tokens=s.nice.max_new_tokens,
                seed=s.nice.seed,
            )
            samples = nice.sample_responses(
                model,
                tokenizer,
                probes,
                settings,
                batch_size=s.nice.generation_batch_size,
                system_prompt=s.system_prompt,
            )
        by_id = {p.record_id: p for p in probes}
        reward_values = rewards.compute_rewards(
            rewards.reward_from_dict(ctx.reward_to_run or {}),
            [
                rewards.RewardItem(
                    probe_id=sample.probe_id,
                    prompt=_prompt_text(by_id[sample.probe_id]),
                    response=sample.text,
                    label=by_id[sample.probe_id].label,
                    metadata=by_id[sample.probe_id].metadata,
                )
                for sample in samples
            ],
            outbound=get_settings().outbound_policy(),
        )
        result = nice.policy_gradient_features(
            model,
            probes,
            samples,
            reward_values,
            weighting=s.nice.weighting,
            checkpoint=ckpt,
            projector=projector,
            provenance=provenance,
            batch_size=s.batch_size,
            pad_token_id=tokenizer.pad_token_id,
            should_stop=ctx.job.cancel_requested,
        )
        lines = [
            json.dumps(
                {
                    "probe_record_id": sample.probe_id,
                    "sample_index": sample.index,
                    "text": sample.text,
                    "n_tokens": len(sample.response_ids),
                    "finished": sample.finished,
                    "reward": reward,
                }
            )
            for sample, reward in zip(samples, reward_values, strict=True)
        ]
        ctx.blobs.put_bytes(samples_key, ("\n".join(lines) + "\n").encode())
        ctx.blobs.put_bytes(shard_key(prefix, 0), result.features.to_safetensors())
        if result.zero_probes:
            ctx.job.note(
                f"epoch {ckpt.epoch}: {len(result.zero_probes)} probes had all-zero sample "
                "weights (e.g. no sample rewarded); their NICE gradient is zero and they add "
                f"nothing to the scores: {result.zero_probes[:10]}"
            )
    _store_samples(ctx, ckpt.epoch, ctx.blobs.get_bytes(samples_key))
    ctx.job.advance(n_records)
    return row_id


def _endpoint_responses(ctx: Context, endpoint: AssistEndpoint) -> tuple[str, dict[str, list[str]]]:
    """NICE-AMC responses fetched from an OpenAI-compatible endpoint, once: they are kept in
    the blob store under the endpoint's content settings and the probes, so resumed jobs,
    later checkpoints and repeated valuations score the same texts."""
    probe_hash, probes = ctx.probe_prompts
    content = endpoint.model_dump(exclude={"timeout_s", "retries", "api_key_secret"})
    key = f"assist/{content_key(endpoint=content, probes=probe_hash)}.json"
    if not ctx.blobs.exists(key):
        api_key = None
        if endpoint.api_key_secret:
            with SessionLocal() as session:
                try:
                    api_key = tenant_secrets.reveal(
                        session, endpoint.api_key_secret, endpoint.base_url
                    )
                except tenant_secrets.SecretMissing as e:
                    raise EngineError(f"the assist endpoint's API key: {e}") from None
        chat = assist.ChatEndpoint(
            **endpoint.model_dump(exclude={"api_key_secret"}), api_key=api_key
        )
        ctx.job.note(
            f"fetching {chat.n} responses per probe for {len(probes)} probes from "
            f"{http.redacted(chat.url)}"
        )
        responses = assist.fetch_responses(chat, probes, outbound=get_settings().outbound_policy())
        ctx.blobs.put_bytes(key, json.dumps(responses, sort_keys=True).encode())
    blob = ctx.blobs.get_bytes(key)
    return hashlib.sha256(blob).hexdigest()[:32], json.loads(blob)


def _assisted_responses(dataset_id: str) -> tuple[str, dict[str, list[str]]]:
    """NICE-AMC responses by probe id (``metadata.probe_id``), and the dataset's content hash."""
    with SessionLocal() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise EngineError(f"assist dataset {dataset_id} no longer exists")
        rows = session.scalars(records_in_order(dataset_id)).all()
        by_probe: dict[str, list[str]] = {}
        for row in rows:
            probe_id = (row.metadata_ or {}).get("probe_id")
            if not isinstance(probe_id, str | int) or isinstance(probe_id, bool):
                raise EngineError(
                    f"assist dataset record {row.record_id} lacks metadata.probe_id naming the "
                    "probe it answers"
                )
            by_probe.setdefault(str(probe_id), []).append(row.messages[-1]["content"])
        return dataset.content_hash, by_probe


def _prompt_text(probe: nice.ProbePrompt) -> str:
    """The prompt as a reward sees it: the last user message (HumanEval: the code stub)."""
    users = [m["content"] for m in probe.messages if m["role"] == "user"]
    return users[-1] if users else ""


def _store_samples(ctx: Context, epoch: int, blob: bytes) -> None:
    """This valuation's sample rows for one checkpoint, replaced (never appended) on re-runs."""
    rows = [
        {
            "tenant_id": ctx.tenant_id,
            "valuation_id": ctx.valuation_id,
            "epoch": epoch,
            **json.loads(line),
        }
        for line in blob.decode().splitlines()
        if line.strip()
    ]
    with _writing() as session:
        _valuation_for_write(session, ctx.valuation_id)  # no samples of a deleted valuation
        session.execute(
            delete(SampleRow).where(
                SampleRow.valuation_id == ctx.valuation_id, SampleRow.epoch == epoch
            )
        )
        if rows:
            session.execute(insert(SampleRow), rows)
        session.commit()


def _lora_settings(s: ValuationSettings) -> lora.LoraSettings:
    return lora.LoraSettings(
        r=int(s.lora.r or 0),
        alpha=float(s.lora.alpha or 0),
        dropout=s.lora.dropout,
        target_modules=tuple(s.lora.target_modules),
    )


def featurize_shard(ctx: Context, task: FeatureShardTask) -> None:
    """Compute one shard of one feature set (if it is not stored yet), then check whether it
    was the last one the valuation waited for."""
    with SessionLocal() as session:
        row = session.get(FeatureSetRow, task.feature_set_id)
        if row is None:
            raise EngineError(f"feature set {task.feature_set_id} no longer exists")
        session.expunge(row)
    key = shard_key(row.blob_prefix, task.shard_index)
    if not ctx.blobs.exists(key):  # written atomically: existing means finished
        s = ctx.settings
        provenance = features.Provenance.from_dict(row.provenance)
        model, tokenizer, fingerprint = cached_model(ctx.model_source, s.dtype, _lora_settings(s))
        if fingerprint != provenance.model:
            raise EngineError(
                f"feature set {row.id} was made with model {provenance.model}, this worker "
                f"loaded {fingerprint}"
            )
        ckpt = _cached_checkpoint(ctx, row.checkpoint_id)
        records = _dataset_slice(row.dataset_id, task.shard_index * row.shard_size, row.shard_size)
        tokenized, _ = data.tokenize_examples(
            tokenizer, records, s.max_length, system_prompt=s.system_prompt
        )
        feature_set = features.featurize(
            model,
            tokenized,
            kind=row.kind,  # type: ignore[arg-type]
            checkpoint=ckpt,
            projector=_projector(model, s, ctx.method.projection),
            provenance=provenance,
            batch_size=min(s.batch_size, _BATCH_SIZE_THAT_FITS.get(ctx.model_source, s.batch_size)),
            pad_token_id=tokenizer.pad_token_id,
            adam_bias_correction=s.adam_bias_correction,
            should_stop=ctx.job.cancel_requested,
            on_batch_size=lambda n: _remember_batch_size(ctx, n),
        )
        with SessionLocal() as session:  # collected with a deleted valuation: write no shard
            if session.get(FeatureSetRow, task.feature_set_id) is None:
                ctx.job.read()
                raise EngineError(f"feature set {task.feature_set_id} no longer exists")
        ctx.blobs.put_bytes(key, feature_set.to_safetensors())
        ctx.job.advance(len(records))
    if all(_all_shards_stored(ctx.blobs, set_id) for set_id in task.feature_set_ids):
        _finish_featurize(ctx, task.feature_set_ids)


def _all_shards_stored(blobs: BlobStore, feature_set_id: str) -> bool:
    with SessionLocal() as session:
        row = session.get(FeatureSetRow, feature_set_id)
        if row is None:
            return False
        if row.status == "complete":
            return True
        prefix, n_shards = row.blob_prefix, row.n_shards
    stored = set(blobs.list_keys(prefix + "/"))
    return all(shard_key(prefix, i) in stored for i in range(n_shards))


def _finish_featurize(ctx: Context, feature_set_ids: Sequence[str]) -> None:
    """Mark the feature sets complete and enqueue scoring, once (compare-and-set on the job)."""
    if not ctx.job.hand_over(FEATURIZE_STAGE, "queued for scoring"):
        return  # another shard task handed over first
    with SessionLocal() as session:
        for set_id in feature_set_ids:
            row = session.get(FeatureSetRow, set_id)
            if row is not None:
                row.status = "complete"
        session.commit()
    enqueue(VALUATION_SCORE, ValuationTask(valuation_id=ctx.valuation_id), job_id=ctx.job.job_id)


def _dataset_slice(dataset_id: str, start: int, size: int) -> list[data.Example]:
    """Records ``start .. start+size`` of a dataset in position order (one shard's worth)."""
    with SessionLocal() as session:
        rows = session.scalars(records_in_order(dataset_id).offset(start).limit(size)).all()
        return [example_of(row) for row in rows]


_BATCH_SIZE_THAT_FITS: dict[str, int] = {}
"""Per model source, the batch size this worker process fell back to after running out of
accelerator memory: later shards start there instead of failing the same way again."""


def _remember_batch_size(ctx: Context, n: int) -> None:
    _BATCH_SIZE_THAT_FITS[ctx.model_source] = n
    ctx.job.note(f"featurize batch size reduced to {n} to fit accelerator memory")


_CHECKPOINT_CACHE: dict[str, warmup.Checkpoint] = {}


def _cached_checkpoint(ctx: Context, checkpoint_id: str) -> warmup.Checkpoint:
    """Adapter and Adam moments of a stored checkpoint (the last two read stay in memory)."""
    if checkpoint_id not in _CHECKPOINT_CACHE:
        with SessionLocal() as session:
            row = session.get(CheckpointRow, checkpoint_id)
            if row is None:
                raise EngineError(f"checkpoint {checkpoint_id} no longer exists")
            adapter_key, optimizer_key = row.adapter_blob_key, row.optimizer_blob_key
        while len(_CHECKPOINT_CACHE) >= 2:
            _CHECKPOINT_CACHE.pop(next(iter(_CHECKPOINT_CACHE)))
        _CHECKPOINT_CACHE[checkpoint_id] = warmup.checkpoint_from_safetensors(
            ctx.blobs.get_bytes(adapter_key), ctx.blobs.get_bytes(optimizer_key)
        )
    return _CHECKPOINT_CACHE[checkpoint_id]


# --- stage 2: scores (CPU queue) --------------------------------------------------------------


def _projector_matches(
    layout: Projection, settings: ValuationSettings, provenance: dict[str, Any]
) -> bool:
    """Whether stored features were projected the way ``_projector`` projects for ``layout``."""
    if provenance["seed"] != settings.projection.seed:
        return False
    if layout == "layerwise":
        spec = provenance["projector"]
        if not spec.startswith(f"{projection.LAYERWISE_SPEC}:"):
            return False  # flat, or an older layer grouping (layerwise:v1: one per module)
        width = settings.datainf.dim_per_layer
        return width is not None and projection.layer_widths(spec) == [
            min(width, size) for size in projection.layer_input_sizes(spec)
        ]
    return (
        not provenance["projector"].startswith("layerwise:")
        and provenance["dim"] == settings.projection.dim
    )


def _feature_sets_by_epoch(
    valuation_id: str,
    method: ValuationMethod,
    settings: ValuationSettings,
    assist_hash: str | None,
) -> tuple[list[float], list[FeatureSetRow], list[FeatureSetRow]]:
    """Pool and probe feature-set rows for this valuation, one each per checkpoint its method
    uses, in epoch order, found by content key (they may have been computed for an identical
    upload); no probe rows for a method without probes."""
    with SessionLocal() as session:
        valuation = session.get(Valuation, valuation_id)
        if valuation is None:
            raise ResourceDeleted(f"valuation {valuation_id} was deleted")
        pool = session.get(Dataset, valuation.pool_dataset_id)
        assert pool is not None
        policy = None
        if method.probe_features == "policy":
            spec = session.get(RewardSpecRow, valuation.reward_spec_id)
            if spec is None:
                raise EngineError(f"reward spec {valuation.reward_spec_id} no longer exists")
            policy = _policy_inputs(dict(spec.spec), settings, assist_hash)
        roles: dict[str, tuple[str, str, int]] = {  # role -> (kind, dataset hash, shard size)
            "pool": (method.pool_features, pool.content_hash, settings.shard_size),
        }
        if method.probe_features is not None:
            probes = session.get(Dataset, valuation.probe_dataset_id)
            assert probes is not None
            roles["probes"] = (
                method.probe_features,
                probes.content_hash,
                _probe_shard_size(probes.n_records),
            )
        ckpts = method.checkpoints_used(
            session.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.warmup_run_id == valuation.warmup_run_id)
                .order_by(CheckpointRow.epoch)
            ).all()
        )
        lrs: list[float] = []
        found: dict[str, list[FeatureSetRow]] = {role: [] for role in roles}
        for ckpt in ckpts:
            rows = session.scalars(
                select(FeatureSetRow).where(
                    FeatureSetRow.checkpoint_id == ckpt.id, FeatureSetRow.status == "complete"
                )
            ).all()
            for role, (kind, dataset_hash, shard_size) in roles.items():
                match = [
                    row
                    for row in rows
                    if row.kind == kind
                    and row.content_key
                    == feature_key(
                        row.provenance,
                        dataset_hash,
                        shard_size,
                        settings.adam_bias_correction,
                        policy=policy,
                    )
                    and _projector_matches(method.projection, settings, row.provenance)
                    and row.provenance["max_length"] == settings.max_length
                    and row.provenance.get("system_prompt") == settings.system_prompt
                ]
                if len(match) != 1:
                    raise EngineError(
                        f"{kind} features of the {role} for epoch {ckpt.epoch} are "
                        f"{'missing' if not match else 'ambiguous'}; run the valuation again"
                    )
                session.expunge(match[0])
                found[role].append(match[0])
            lrs.append(ckpt.mean_lr)
        return lrs, found["pool"], found.get("probes", [])


def _load_features(blobs: BlobStore, row: FeatureSetRow, index: int) -> features.FeatureSet:
    return features.FeatureSet.from_safetensors(
        blobs.get_bytes(f"{row.blob_prefix}/shard-{index:05d}.safetensors")
    )


SCORE_PREFETCH = 3
"""Pool shards read ahead while scoring (each is shard_size x d x 2 bytes per checkpoint)."""


def _load_pool_shard(
    blobs: BlobStore, pool_sets: Sequence[FeatureSetRow], index: int
) -> list[features.FeatureSet]:
    return [_load_features(blobs, row, index) for row in pool_sets]


def _stream_pool(
    ctx: Context, pool_sets: Sequence[FeatureSetRow], n_shards: int
) -> Iterator[list[features.FeatureSet]]:
    """Pool shards (one feature set per checkpoint each) in order, ``SCORE_PREFETCH`` read
    ahead by threads while the previous one is used; one job progress step per shard."""
    with ThreadPoolExecutor(max_workers=SCORE_PREFETCH) as reader:
        pending = [
            reader.submit(_load_pool_shard, ctx.blobs, pool_sets, i)
            for i in range(min(SCORE_PREFETCH, n_shards))
        ]
        for index in range(n_shards):
            if ctx.job.cancel_requested():
                for future in pending:
                    future.cancel()
                raise Cancelled("cancelled during scoring")
            shard = pending.pop(0).result()
            if index + SCORE_PREFETCH < n_shards:
                pending.append(
                    reader.submit(_load_pool_shard, ctx.blobs, pool_sets, index + SCORE_PREFETCH)
                )
            yield shard
            ctx.job.advance(1)


def score_valuation(ctx: Context) -> None:
    """Stream the stored pool features through the method's scorer; store ranked scores."""
    method = ctx.method
    assisted = ctx.assisted_responses if method.probe_features == "policy" else None
    lrs, pool_sets, probe_sets = _feature_sets_by_epoch(
        ctx.valuation_id, method, ctx.settings, assisted[0] if assisted else None
    )
    probes = [
        features.FeatureSet.concat([_load_features(ctx.blobs, row, i) for i in range(row.n_shards)])
        for row in probe_sets
    ]
    n_shards = pool_sets[0].n_shards
    if any(row.n_shards != n_shards for row in pool_sets):
        raise EngineError("pool feature sets disagree on sharding across checkpoints")
    ctx.job.stage("score", total=method.pool_passes * n_shards)
    shards = method.score(
        ScoringInput(
            pool=lambda: _stream_pool(ctx, pool_sets, n_shards),
            probes=probes,
            mean_lrs=lrs,
            settings={name: getattr(ctx.settings, name).model_dump() for name in method.settings},
            device=compute_device(),
            note=ctx.job.note,
        )
    )
    record_ids: list[str] = []
    scores: list[float] = []
    per_subtask: dict[str, list[float]] = {}
    for shard in shards:
        record_ids += shard.record_ids
        scores += shard.scores.tolist()
        for name, values in shard.per_subtask.items():
            per_subtask.setdefault(name, []).extend(values.tolist())

    order = influence.rank(record_ids, torch.tensor(scores, dtype=torch.float64))
    lines = []
    rows = []
    for rank_, i in enumerate(order):
        breakdown = {name: values[i] for name, values in per_subtask.items()}
        rows.append(
            {
                "tenant_id": ctx.tenant_id,
                "valuation_id": ctx.valuation_id,
                "record_id": record_ids[i],
                "rank": rank_,
                "score": scores[i],
                "per_subtask": breakdown,
            }
        )
        lines.append(
            json.dumps(
                {
                    "rank": rank_,
                    "record_id": record_ids[i],
                    "score": scores[i],
                    "per_subtask": breakdown,
                }
            )
        )
    score_key = f"scores/{ctx.valuation_id}.jsonl"
    ctx.blobs.put_bytes(score_key, ("\n".join(lines) + "\n").encode())
    summary = summaries.column_summary(scores)  # the distribution view: as score sets have
    plot_key = f"scores/{ctx.valuation_id}-hist.png"
    figure = plots.histogram_figure(summary, column="score", title=f"{method.name} scores")
    ctx.blobs.put_bytes(plot_key, plots.render(figure, "png"))
    with _writing() as session:  # replace, never append: a re-run writes the same rows
        try:
            valuation = _valuation_for_write(session, ctx.valuation_id)
        except ResourceDeleted:  # its DELETE removed the files already, or missed these
            ctx.blobs.delete_prefix(score_key)
            ctx.blobs.delete_prefix(plot_key)
            raise
        session.execute(delete(Score).where(Score.valuation_id == ctx.valuation_id))
        if rows:
            session.execute(Score.__table__.insert(), rows)
        valuation.score_blob_key, valuation.n_scored = score_key, len(rows)
        valuation.score_summary = summary | {"plot_blob_key": plot_key}
        session.commit()
    ctx.job.succeed()


# --- Celery entry points ----------------------------------------------------------------------


@celery_app.task(name=VALUATION_FEATURIZE, bind=True, acks_late=True, reject_on_worker_lost=True)
def featurize_task(self: Task, valuation_id: str) -> None:
    """Warmup checkpoints, pool Adam features and probe SGD features; then enqueue scoring."""
    _run_job(self, ValuationTask(valuation_id=valuation_id).valuation_id, featurize_valuation)


@celery_app.task(
    name=VALUATION_FEATURIZE_SHARD, bind=True, acks_late=True, reject_on_worker_lost=True
)
def featurize_shard_task(self: Task, **payload: Any) -> None:
    """One feature shard; the last shard of a valuation enqueues its scoring."""
    task = FeatureShardTask.model_validate(payload)
    _run_job(self, task.valuation_id, lambda ctx: featurize_shard(ctx, task), already_running=True)


@celery_app.task(name=VALUATION_SCORE, bind=True, acks_late=True, reject_on_worker_lost=True)
def score_task(self: Task, valuation_id: str) -> None:
    """LESS / TracIn scores streamed over the stored pool shards."""
    _run_job(self, ValuationTask(valuation_id=valuation_id).valuation_id, score_valuation)


__all__ = [
    "content_key",
    "featurize_shard_task",
    "featurize_task",
    "resolve_settings",
    "score_task",
]
