"""Evaluation task: per arm (and seed) fine-tune LoRA, score the target set; then the table.

Glue only (``workers.engine.evaluation`` does the work): load the model, the pool and the
target; resolve each arm's training set (selection, curation and score-set arms carry their
record ids from creation; random arms draw ``budget`` pool records per seed; ``full`` takes
the pool); for each run train fresh adapters from the same initial state, score the target
records (response loss, and the task metric), store the run; then summarise, plot and write
the row.

Resumable: each run is stored as ``evaluations/<id>/runs/<arm>-<seed>.json`` as soon as it is
done, and a re-delivered task (``acks_late``) skips the runs it finds. The row is written last;
an evaluation deleted meanwhile leaves no files behind.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from celery import Task
from sqlalchemy import select

from service.blobs import BlobNotFound, BlobStore
from service.config import get_settings
from service.db.models import Dataset, Evaluation, Model, Record
from service.db.models import RewardSpec as RewardSpecRow
from service.db.session import SessionLocal, for_writes, get_engine
from service.queue import celery_app
from workers.contracts import EVALUATION_RUN, EvaluationSettings, EvaluationTask
from workers.engine import data, evaluation, lora, models, plots, rewards, warmup
from workers.engine.errors import EngineError
from workers.engine.nice import ProbePrompt
from workers.tasks.common import (
    example_of,
    load_model,
    reward_spec_to_run,
    tenant_blobs,
)
from workers.tasks.jobs import JobTracker, ResourceDeleted, run_tracked
from workers.tasks.valuation import LESS_LORA, TINY_LORA

log = logging.getLogger(__name__)

TRAIN_STAGE = "train and evaluate"


def resolve_settings(requested: dict[str, Any], source: str) -> EvaluationSettings:
    """Fill the model-dependent LoRA defaults (as valuations do: r=8 for the builtin tiny
    model, LESS's r=128 otherwise; alpha = 4r)."""
    settings = EvaluationSettings.model_validate(requested)
    defaults = TINY_LORA if source == models.TINY_LLAMA else LESS_LORA
    r = settings.lora.r if settings.lora.r is not None else int(defaults["r"])
    alpha = settings.lora.alpha if settings.lora.alpha is not None else 4.0 * r
    return settings.model_copy(
        update={"lora": settings.lora.model_copy(update={"r": r, "alpha": alpha})}
    )


class EvaluationContext:
    def __init__(self, evaluation_id: str) -> None:
        with SessionLocal() as session:
            row = session.get(Evaluation, evaluation_id)
            if row is None:
                raise LookupError(evaluation_id)
            session.info["tenant_id"] = row.tenant_id  # what it names must be its own
            model = session.get(Model, row.model_id)
            if model is None:
                raise EngineError(f"model {row.model_id} no longer exists")
            self.settings = resolve_settings(row.settings, model.source)
            row.settings = self.settings.model_dump(mode="json")
            session.commit()
            self.evaluation_id = evaluation_id
            self.name: str | None = row.name
            self.model_source: str = model.source
            self.pool_dataset_id: str = row.pool_dataset_id
            self.target_dataset_id: str = row.target_dataset_id
            self.budget: int = row.budget
            self.arms: list[dict[str, Any]] = list(row.arms)
            self.metric: dict[str, Any] | None = row.metric
            self.tenant_id: str = row.tenant_id
            self.job = JobTracker(row.job_id)
        self.blobs: BlobStore = tenant_blobs(self.tenant_id)
        self.prefix = f"evaluations/{evaluation_id}"


class _Dataset:
    """A dataset's records as examples, with their metadata and content hash."""

    def __init__(self, dataset_id: str) -> None:
        with SessionLocal() as session:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None:
                raise EngineError(f"dataset {dataset_id} no longer exists")
            rows = session.scalars(
                select(Record).where(Record.dataset_id == dataset_id).order_by(Record.position)
            ).all()
            self.content_hash: str = dataset.content_hash
            self.examples = [example_of(r) for r in rows]
            self.metadata = {r.record_id: dict(r.metadata_ or {}) for r in rows}


def _runs(ctx: EvaluationContext) -> list[tuple[int, int | None]]:
    """(arm index, seed) of every run: one per seed for random arms, one otherwise."""
    out: list[tuple[int, int | None]] = []
    for i, arm in enumerate(ctx.arms):
        if arm["kind"] == "random":
            out += [(i, int(seed)) for seed in arm["seeds"]]
        else:
            out.append((i, None))
    return out


def _training_set(
    ctx: EvaluationContext,
    arm: dict[str, Any],
    seed: int | None,
    pool: _Dataset,
    pool_tok: dict[str, data.TokenizedExample],
) -> list[data.TokenizedExample]:
    if arm["kind"] == "full":
        ids = [ex.record_id for ex in pool.examples]
    elif arm["kind"] == "random":
        assert seed is not None
        picked = evaluation.random_subset(len(pool.examples), ctx.budget, seed)
        ids = [pool.examples[i].record_id for i in picked]
    else:
        ids = list(arm["record_ids"])
    unknown = [r for r in ids if r not in pool.metadata]
    if unknown:
        raise EngineError(f"arm {arm['name']!r} names records not in the pool: {unknown[:5]}")
    train = [pool_tok[r] for r in ids if r in pool_tok]
    if not train:
        raise EngineError(
            f"arm {arm['name']!r}: no training record fits in max_length={ctx.settings.max_length}"
        )
    return train


def _training_sets(
    ctx: EvaluationContext,
    runs: list[tuple[int, int | None]],
    pool: _Dataset,
    pool_tok: dict[str, data.TokenizedExample],
    settings: warmup.WarmupSettings,
) -> dict[tuple[int, int | None], list[data.TokenizedExample]]:
    """Every run's training set, each checked to learn before any is trained: the API checks
    the budget, but records cut by max_length can leave an arm one optimizer step, taken at
    learning rate 0 (the job then fails naming the arm, with nothing trained)."""
    sets = {}
    for arm_index, seed in runs:
        arm = ctx.arms[arm_index]
        train = _training_set(ctx, arm, seed, pool, pool_tok)
        try:
            warmup.check_schedule_learns(len(train), settings)
        except EngineError as exc:
            kept = f"{len(train)} of its records fit in max_length={ctx.settings.max_length}"
            raise EngineError(f"arm {arm['name']!r}: {kept}, and {exc}") from None
        sets[arm_index, seed] = train
    return sets


class _Metric:
    """The task metric per target example, or nothing."""

    def __init__(self, ctx: EvaluationContext, target: _Dataset) -> None:
        self.config: dict[str, Any] = dict(ctx.metric or {})
        self.kind: str | None = self.config.get("kind")
        self.spec: rewards.RewardSpec | None = None
        self.label: str | None = None
        self.ctx, self.target = ctx, target
        if self.kind == "reward":
            spec_id = self.config["reward_spec_id"]
            with SessionLocal() as session:
                row = session.get(RewardSpecRow, spec_id)
                if row is None:
                    raise EngineError(f"reward spec {spec_id} no longer exists")
                self.spec = rewards.reward_from_dict(reward_spec_to_run(row))
            self.label = f"{self.spec.KIND} reward"
        elif self.kind == "multiple_choice":
            self.label = "multiple-choice accuracy"

    def values(self, model: Any, tokenizer: Any, ids: list[str]) -> list[float] | None:
        if self.kind is None:
            return None
        examples = {ex.record_id: ex for ex in self.target.examples}
        s = self.ctx.settings
        if self.kind == "multiple_choice":
            questions = []
            for r in ids:
                choices, answer = evaluation.multiple_choice_answer(r, self.target.metadata[r])
                questions.append((examples[r].messages[:-1], choices, answer))
            return evaluation.multiple_choice_correct(
                model,
                tokenizer,
                questions,
                max_length=s.max_length,
                length_normalized=bool(self.config.get("length_normalized", False)),
                system_prompt=s.system_prompt,
            )
        prompts = [ProbePrompt(r, examples[r].messages[:-1]) for r in ids]
        responses = evaluation.greedy_responses(
            model,
            tokenizer,
            prompts,
            max_new_tokens=s.max_new_tokens,
            system_prompt=s.system_prompt,
        )
        items = []
        for r, response in zip(ids, responses, strict=True):
            messages, metadata = examples[r].messages, self.target.metadata[r]
            users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
            items.append(
                rewards.RewardItem(
                    probe_id=r,
                    prompt=users[-1] if users else "",
                    response=response,
                    label=rewards.record_label(messages, metadata),
                    metadata=metadata,
                )
            )
        if self.spec is None:
            raise EngineError(f"unknown metric kind {self.kind!r}")
        outbound = get_settings().outbound_policy()
        return rewards.compute_rewards(self.spec, items, outbound=outbound)


def _load_run(blobs: BlobStore, key: str) -> dict[str, Any] | None:
    try:
        stored: dict[str, Any] = json.loads(blobs.get_bytes(key))
    except BlobNotFound:
        return None
    return stored


def run(ctx: EvaluationContext) -> None:
    s = ctx.settings
    ctx.job.stage("load model")
    model, tokenizer = load_model(ctx.model_source, s.dtype)  # GGUF: via the model cache
    fingerprint = models.model_fingerprint(ctx.model_source, model)
    ctx.job.stage("tokenize")
    pool, target = _Dataset(ctx.pool_dataset_id), _Dataset(ctx.target_dataset_id)
    pool_list, pool_skipped = data.tokenize_examples(
        tokenizer, pool.examples, s.max_length, system_prompt=s.system_prompt
    )
    target_tok, target_skipped = data.tokenize_examples(
        tokenizer, target.examples, s.max_length, system_prompt=s.system_prompt
    )
    notes = []
    if pool_skipped:
        notes.append(
            f"{len(pool_skipped)} pool records do not fit in max_length={s.max_length} and are "
            f"left out of every arm's training: {[x.record_id for x in pool_skipped[:5]]}"
        )
    if target_skipped:
        notes.append(
            f"{len(target_skipped)} target records do not fit in max_length={s.max_length} and "
            f"are not scored: {[x.record_id for x in target_skipped[:5]]}"
        )
    for note in notes:
        ctx.job.note(note)
    if not target_tok:
        raise EngineError(f"no target record fits in max_length={s.max_length}")
    pool_tok = {t.record_id: t for t in pool_list}
    target_ids = [t.record_id for t in target_tok]
    metric = _Metric(ctx, target)

    lora_settings = lora.LoraSettings(
        r=int(s.lora.r or 0),
        alpha=float(s.lora.alpha or 0),
        dropout=s.lora.dropout,
        target_modules=tuple(s.lora.target_modules),
    )
    peft_model = lora.attach_lora(model, lora_settings, seed=s.training.seed)
    initial = {n: p.detach().clone() for n, p in lora.lora_parameters(peft_model)}
    train_settings = warmup.WarmupSettings(fraction=1.0, **s.training.model_dump())
    pad = int(tokenizer.pad_token_id)
    runs = _runs(ctx)
    train_sets = _training_sets(ctx, runs, pool, pool_tok, train_settings)

    ctx.job.stage("base model")
    base_key = f"{ctx.prefix}/runs/base.json"
    base = _load_run(ctx.blobs, base_key)
    if base is None:  # fresh adapters (B = 0): the model as registered
        losses = evaluation.target_losses(
            peft_model, target_tok, batch_size=s.batch_size, pad_token_id=pad
        )
        base = {
            "target_record_ids": target_ids,
            "loss": [float(v) for v in losses],
            "metric": metric.values(peft_model, tokenizer, target_ids),
        }
        ctx.job.read()
        ctx.blobs.put_bytes(base_key, json.dumps(base, separators=(",", ":")).encode())

    ctx.job.stage(TRAIN_STAGE, total=len(runs))
    stored: dict[tuple[int, int | None], dict[str, Any]] = {}
    reused = 0
    for arm_index, seed in runs:
        key = f"{ctx.prefix}/runs/{arm_index:02d}-{'x' if seed is None else seed}.json"
        done = _load_run(ctx.blobs, key)
        if done is None:
            train = train_sets[arm_index, seed]
            tuned = evaluation.fine_tune(
                peft_model,
                train,
                train_settings,
                initial_adapter=initial,
                pad_token_id=pad,
                should_stop=ctx.job.cancel_requested,
            )
            losses = evaluation.target_losses(
                peft_model, target_tok, batch_size=s.batch_size, pad_token_id=pad
            )
            done = {
                "arm": arm_index,
                "seed": seed,
                "n_train": len(train),
                "train_record_ids": [t.record_id for t in train],
                "target_record_ids": target_ids,
                "loss": [float(v) for v in losses],
                "metric": metric.values(peft_model, tokenizer, target_ids),
                "curve": {
                    "steps": tuned.steps,
                    "loss": tuned.losses,
                    "learning_rate": tuned.learning_rates,
                    "epoch_steps": tuned.epoch_steps,
                },
            }
            ctx.job.read()  # deleted meanwhile: ResourceDeleted, before writing its files
            ctx.blobs.put_bytes(key, json.dumps(done, separators=(",", ":")).encode())
        else:
            reused += 1
        stored[(arm_index, seed)] = done
        ctx.job.advance(1)
    if reused:
        ctx.job.note(f"resumed: {reused} of {len(runs)} runs were stored already")

    ctx.job.stage("table")
    result = _table(ctx, stored, runs, metric.label, target_ids, notes, base)
    result["provenance"] = {
        "model": fingerprint,
        "parameter_order": lora.parameter_order_hash(peft_model),
        "pool_content_hash": pool.content_hash,
        "target_content_hash": target.content_hash,
        "budget": ctx.budget,
        "settings": s.model_dump(mode="json"),
        "metric": ctx.metric,
    }
    examples = _examples(ctx, stored, runs, target_ids, base, metric.label is not None)
    ctx.blobs.put_bytes(examples_key(ctx.evaluation_id), json.dumps(examples).encode())
    figure = plots.evaluation_figure(result, title=ctx.name)
    png, svg = f"{ctx.prefix}/plot.png", f"{ctx.prefix}/plot.svg"
    ctx.blobs.put_bytes(png, plots.render(figure, "png"))
    ctx.blobs.put_bytes(svg, plots.render(figure, "svg"))
    with SessionLocal(bind=for_writes(get_engine())) as session:
        row = session.get(
            Evaluation, ctx.evaluation_id, with_for_update=True, populate_existing=True
        )
        if row is None:  # deleted meanwhile: its runs and plots must not stay behind
            ctx.blobs.delete_prefix(f"{ctx.prefix}/")
            raise ResourceDeleted(f"evaluation {ctx.evaluation_id} was deleted")
        row.result, row.plot_png_key, row.plot_svg_key = result, png, svg
        session.commit()
    ctx.job.succeed()


def examples_key(evaluation_id: str) -> str:
    """Per target example, each arm's seed-averaged loss and metric (the table's inputs)."""
    return f"evaluations/{evaluation_id}/examples.json"


def _examples(
    ctx: EvaluationContext,
    stored: dict[tuple[int, int | None], dict[str, Any]],
    runs: list[tuple[int, int | None]],
    target_ids: list[str],
    base: dict[str, Any],
    has_metric: bool,
) -> dict[str, Any]:
    """``{"record_ids", "base": {"loss", "metric"}, "arms": {name: {"loss", "metric"}}}``,
    each a list aligned with ``record_ids`` (metric lists null without a metric)."""
    arms: dict[str, dict[str, list[float] | None]] = {}
    for i, arm in enumerate(ctx.arms):
        mine = [stored[r] for r in runs if r[0] == i]
        arms[arm["name"]] = {
            q: np.asarray([m[q] for m in mine], dtype=np.float64).mean(axis=0).tolist()
            if q == "loss" or has_metric
            else None
            for q in ("loss", "metric")
        }
    return {
        "record_ids": target_ids,
        "base": {"loss": base["loss"], "metric": base["metric"]},
        "arms": arms,
    }


def _table(
    ctx: EvaluationContext,
    stored: dict[tuple[int, int | None], dict[str, Any]],
    runs: list[tuple[int, int | None]],
    metric_label: str | None,
    target_ids: list[str],
    notes: list[str],
    base: dict[str, Any],
) -> dict[str, Any]:
    """The table: per arm its loss (and metric) summary over runs, its curves, and the paired
    difference of its seed-averaged per-example values from the reference arm's."""
    s = ctx.settings
    boot: dict[str, Any] = {
        "resamples": s.bootstrap,
        "confidence": s.confidence,
        "seed": s.bootstrap_seed,
    }
    quantities = ["loss"] + (["metric"] if metric_label is not None else [])
    if base["target_record_ids"] != target_ids:
        raise EngineError("the stored base-model scores are of other target records")
    seed_means: list[dict[str, np.ndarray]] = []
    arms = []
    for i, arm in enumerate(ctx.arms):
        mine = [stored[r] for r in runs if r[0] == i]
        if any(m["target_record_ids"] != target_ids for m in mine):
            raise EngineError(f"arm {arm['name']!r}: a stored run scored other target records")
        row: dict[str, Any] = {
            "name": arm["name"],
            "kind": arm["kind"],
            "n_train": mine[0]["n_train"],
            "loss": None,
            "metric": None,
            "vs_reference": None,
            "curves": [{"seed": m["seed"], **m["curve"]} for m in mine],
        }
        means = {}
        for q in quantities:
            values = [m[q] for m in mine]
            row[q] = evaluation.summarize_arm(values, **boot).to_dict()
            means[q] = np.asarray(values, dtype=np.float64).mean(axis=0)
        seed_means.append(means)
        arms.append(row)
    reference = next((i for i, a in enumerate(ctx.arms) if a.get("reference")), None)
    if reference is not None:
        for i, row in enumerate(arms):
            if i == reference:
                continue
            row["vs_reference"] = {"loss": None, "metric": None}
            for q in quantities:
                diff = evaluation.paired_difference(
                    seed_means[i][q], seed_means[reference][q], **boot
                )
                row["vs_reference"][q] = {"mean": diff.mean, "low": diff.low, "high": diff.high}
    base_row = {
        q: evaluation.summarize_arm([base[q]], **boot).to_dict() if q in quantities else None
        for q in ("loss", "metric")
    }
    return {
        "n_target": len(target_ids),
        "metric": metric_label,
        "confidence": s.confidence,
        "bootstrap": s.bootstrap,
        "arms": arms,
        "reference": ctx.arms[reference]["name"] if reference is not None else None,
        "base": base_row,
        "notes": notes,
    }


@celery_app.task(name=EVALUATION_RUN, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_task(self: Task, evaluation_id: str) -> None:
    """A whole evaluation; re-delivered after a crash, it resumes from the stored runs."""
    try:
        ctx = EvaluationContext(EvaluationTask(evaluation_id=evaluation_id).evaluation_id)
    except LookupError:
        log.warning("evaluation %s does not exist; dropping task", evaluation_id)
        return
    run_tracked(ctx.job, lambda: run(ctx), task=self)


__all__ = ["resolve_settings", "run", "run_task"]
