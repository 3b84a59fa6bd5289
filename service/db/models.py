"""Every ORM model, in one module so Alembic sees one metadata.

The Celery workers read and write these tables too; column names are part of the contract.
Ids of public resources are uuid4 hex strings; timestamps are aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db.base import Base, UTCDateTime, new_id, utcnow
from service.tenancy import TenantOwned

# Plain JSON (not JSONB) on Postgres: the text is kept as written, so key order of ``raw``
# records survives and an export gives records back verbatim.


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


# --- identity: tenants, their API keys and their secrets ---------------------------------------

ROLES = ("admin", "member", "read_only")
"""admin: everything, keys included; member: every resource, no keys; read_only: GET only."""


class Tenant(Base):
    """A team sharing one Sift: every resource row carries its ``tenant_id``."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key: only its sha256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(32))
    """The key's first characters, to tell keys apart in lists; not enough to use it."""
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


SECRET_SOURCES = ("stored", "worker_env")


class TenantSecret(TenantOwned, Base):
    """A named secret a tenant's outbound calls may use (e.g. an assist endpoint's key):
    a value the tenant stored (encrypted with ``SIFT_SECRET_KEY``), or a worker environment
    variable an operator granted to this tenant. Never returned by the API."""

    __tablename__ = "tenant_secrets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint(_in("source", SECRET_SOURCES), name="source"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(16))
    ciphertext: Mapped[str | None] = mapped_column(Text)
    """source "stored": the Fernet token of the value."""
    env_var: Mapped[str | None] = mapped_column(String(100))
    """source "worker_env": the worker variable the operator granted."""
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    """The only hosts the secret may be sent to (exact names, lower case): a key that may
    reach a client-chosen URL must be bound to where it belongs, or any key of the tenant
    could send it to its own server."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- resources ---------------------------------------------------------------------------------


class Dataset(TenantOwned, Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    n_records: Mapped[int] = mapped_column(Integer)
    n_duplicates: Mapped[int] = mapped_column(Integer, default=0)
    n_prompt_only: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Records with no response (NICE probes); LESS needs responses everywhere."""
    duplicates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Skipped exact duplicates: ``[{"index", "record_id", "duplicate_of"}]``."""
    content_hash: Mapped[str] = mapped_column(String(64))
    """sha256 over (record_id, record content_hash) in position order."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    records: Mapped[list[Record]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Record.position",
    )


class Record(TenantOwned, Base):
    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("dataset_id", "record_id"),
        Index(None, "dataset_id", "position"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    record_id: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)
    subtask: Mapped[str | None] = mapped_column(String(255))
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    """Normalized ``[{"role", "content"}]``; the last message is the assistant response."""
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    raw: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The record exactly as uploaded."""
    content_hash: Mapped[str] = mapped_column(String(64))
    """sha256 of the canonical JSON of ``messages``."""

    dataset: Mapped[Dataset] = relationship(back_populates="records")


class Model(TenantOwned, Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(1024))
    """``builtin:<name>``, an absolute local directory, or a hub id ``org/name``."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RewardSpec(TenantOwned, Base):
    """A named reward definition for NICE valuations (``workers.contracts.RewardSpec``)."""

    __tablename__ = "reward_specs"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The validated spec, defaults filled in: what workers execute, less its secrets."""
    secret_headers: Mapped[str | None] = mapped_column(Text)
    """http_judge only: the Fernet token of the request headers' JSON (write-only)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


METHODS = (
    "less",
    "tracin",
    "tracin_adam",
    "nice",
    "datainf",
    "nice_if",
    "self_influence",
    "self_influence_adam",
    "self_influence_token_weighted",
)


class Sample(TenantOwned, Base):
    """One Monte-Carlo response to a NICE probe at one checkpoint, with its reward (audit)."""

    __tablename__ = "samples"
    __table_args__ = (Index(None, "valuation_id", "epoch", "probe_record_id", "sample_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    valuation_id: Mapped[str] = mapped_column(ForeignKey("valuations.id"))
    epoch: Mapped[int] = mapped_column(Integer)
    probe_record_id: Mapped[str] = mapped_column(String(255))
    sample_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    n_tokens: Mapped[int] = mapped_column(Integer)
    finished: Mapped[bool] = mapped_column(Boolean)
    """Whether the model ended the response (EOS) rather than hitting max_new_tokens."""
    reward: Mapped[float] = mapped_column(Float)


class Job(TenantOwned, Base):
    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_in("status", JobStatus), name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    stage: Mapped[str | None] = mapped_column(String(64))
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Last beat of any of its running tasks (or its last recovery): a stale one means nothing
    runs it."""
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Valuation(TenantOwned, Base):
    __tablename__ = "valuations"
    __table_args__ = (CheckConstraint(_in("method", METHODS), name="method"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    pool_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    probe_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    """None for the self-influence methods, which have no probes."""
    method: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``ValuationSettings.model_dump()`` as requested; the worker writes back resolved values."""
    warmup_run_id: Mapped[str | None] = mapped_column(ForeignKey("warmup_runs.id"))
    reward_spec_id: Mapped[str | None] = mapped_column(ForeignKey("reward_specs.id"), index=True)
    """NICE only: the reward its probe samples are scored with."""
    assist_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    """NICE-AMC only: a stronger model's responses, used instead of sampling."""
    warmup_eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    """A held-out set whose response loss is measured at every warmup checkpoint (the run's
    ``curve["heldout"]``)."""
    score_blob_key: Mapped[str | None] = mapped_column(String(1024))
    n_scored: Mapped[int | None] = mapped_column(Integer)
    score_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """``workers.engine.summaries.column_summary`` of the scores, with ``plot_blob_key`` (the
    histogram as a PNG); None until scored (and for valuations scored before 0013)."""
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """``[{"record_id", "dataset", "reason"}]``: records the worker could not score."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)


WARMUP_ORIGINS = ("warmup", "upload")


class WarmupRun(TenantOwned, Base):
    """A run of LoRA checkpoints: trained by Sift on a pool (``origin`` "warmup") or uploaded
    as adapters with their steps and learning rates ("upload": no pool, no Adam moments)."""

    __tablename__ = "warmup_runs"
    __table_args__ = (
        CheckConstraint(_in("status", ("running", "complete")), name="status"),
        CheckConstraint(_in("origin", WARMUP_ORIGINS), name="origin"),
        UniqueConstraint("tenant_id", "content_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    content_key: Mapped[str] = mapped_column(String(128))
    origin: Mapped[str] = mapped_column(String(16), default="warmup", server_default="warmup")
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    pool_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``{"lora": LoraSpec}`` (resolved), plus ``"warmup"`` for runs Sift trained."""
    status: Mapped[str] = mapped_column(String(16), default="running")
    n_train: Mapped[int | None] = mapped_column(Integer)
    curve: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Sift-trained runs: ``{"step", "loss", "learning_rate"}`` (one entry per optimizer step)
    and ``"epochs"`` (``[{"epoch", "step", "train_loss"}]``), written at every checkpoint;
    ``"heldout"`` once a valuation on the complete run named a held-out set: one entry per
    (set content, max_length, system prompt), ``{"dataset_id", "content_hash", "max_length",
    "system_prompt", "n_records", "n_skipped", "epochs": [{"epoch", "step", "loss"}]}``.
    ``None`` for uploads (trained elsewhere) and runs trained before it was recorded."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="warmup_run",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Checkpoint.epoch",
    )


class Checkpoint(TenantOwned, Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("warmup_run_id", "epoch"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    warmup_run_id: Mapped[str] = mapped_column(ForeignKey("warmup_runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    mean_lr: Mapped[float] = mapped_column(Float)
    adapter_blob_key: Mapped[str] = mapped_column(String(1024))
    optimizer_blob_key: Mapped[str | None] = mapped_column(String(1024))
    """Adam moments; None for uploaded adapters (studies need none)."""
    content_hash: Mapped[str] = mapped_column(String(64))

    warmup_run: Mapped[WarmupRun] = relationship(back_populates="checkpoints")


FEATURE_KINDS = ("sgd", "adam", "policy", "sgd_sum")
"""As ``workers.engine.features.FEATURE_KINDS`` (a test holds the two equal)."""


class FeatureSet(TenantOwned, Base):
    __tablename__ = "feature_sets"
    __table_args__ = (
        CheckConstraint(_in("kind", FEATURE_KINDS), name="kind"),
        CheckConstraint(_in("status", ("building", "complete")), name="status"),
        UniqueConstraint("tenant_id", "content_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    content_key: Mapped[str] = mapped_column(String(128))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"))
    kind: Mapped[str] = mapped_column(String(8))
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    n_records: Mapped[int] = mapped_column(Integer)
    shard_size: Mapped[int] = mapped_column(Integer)
    n_shards: Mapped[int] = mapped_column(Integer)
    blob_prefix: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="building")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Score(TenantOwned, Base):
    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("valuation_id", "rank"),
        Index(None, "valuation_id", "record_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    valuation_id: Mapped[str] = mapped_column(ForeignKey("valuations.id", ondelete="CASCADE"))
    record_id: Mapped[str] = mapped_column(String(255))
    rank: Mapped[int] = mapped_column(Integer)
    """0-based; the worker breaks ties deterministically, so ordering by rank is total."""
    score: Mapped[float] = mapped_column(Float)
    per_subtask: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class Selection(TenantOwned, Base):
    __tablename__ = "selections"
    __table_args__ = (
        CheckConstraint(_in("rule", ("top_k", "top_fraction", "threshold")), name="rule"),
        CheckConstraint(_in('"order"', ("desc", "asc")), name="order"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    valuation_id: Mapped[str] = mapped_column(
        ForeignKey("valuations.id", ondelete="CASCADE"), index=True
    )
    rule: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    order: Mapped[str] = mapped_column(String(4), default="desc", server_default="desc")
    """desc: the highest scores (best ranks) first; asc: the lowest first."""
    n_selected: Mapped[int] = mapped_column(Integer)
    record_ids: Mapped[list[str]] = mapped_column(JSON)
    """Selected pool record ids in the order taken."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Study(TenantOwned, Base):
    """A strategy study (seed 001): RelInf of named probe sets on an evaluation set, paired by
    ``metadata[pair_key]``, over the checkpoints of a warmup run."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    warmup_run_id: Mapped[str] = mapped_column(ForeignKey("warmup_runs.id"), index=True)
    eval_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    probe_sets: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    """``[{"name", "dataset_id"}]`` in request order (the plots' legend order)."""
    pair_key: Mapped[str] = mapped_column(String(200))
    reference: Mapped[str | None] = mapped_column(String(200))
    """Name of the probe set the others are compared with (``exceeds_reference_from_step``)."""
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Curves by step, per-pair values and verdicts; written once the job succeeds."""
    plot_png_key: Mapped[str | None] = mapped_column(String(1024))
    plot_svg_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)


SCORERS = ("quality", "text", "knn", "random", "bm25", "dsir", "rds", "reward")
"""As ``workers.contracts.SCORERS`` (a test holds the two equal)."""


class ScoreSet(TenantOwned, Base):
    """Per-record scores of one scorer (seed 003 toolbox) over a dataset: one or more named
    columns (e.g. a "quality" set holds nll, perplexity, el2n, ...) that selections can use."""

    __tablename__ = "score_sets"
    __table_args__ = (CheckConstraint(_in("scorer", SCORERS), name="scorer"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    scorer: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    probe_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    """Importance scorers only: the probes records are scored against."""
    reward_spec_id: Mapped[str | None] = mapped_column(ForeignKey("reward_specs.id"))
    """Scorer "reward" only: the reward each record's response gets."""
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    values_blob_key: Mapped[str | None] = mapped_column(String(1024))
    """``{"record_ids": [...], "columns": {name: [value or null, ...]}}`` in dataset order."""
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Per column: count, missing, mean, std, min, max, quantiles and a histogram."""
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Scorer "knn" only, once succeeded: the dataset-level diversity report (Vendi score, kNN
    mean distance, k-means inertia) of the same embeddings."""
    n_records: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)


class Curation(TenantOwned, Base):
    """A selection composed from score sets (seed 003): filters, then a rank or diversity pick,
    under quotas. The request is kept as ``recipe``; the result is the picked record ids."""

    __tablename__ = "curations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    """Only for diversity picks in the model's embedding space ("lm")."""
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``{"filters", "pick", "budget", "budget_fraction", "quota", "settings"}`` as validated."""
    record_ids: Mapped[list[str] | None] = mapped_column(JSON)
    """Selected record ids in pick order; written once the job succeeds."""
    n_selected: Mapped[int | None] = mapped_column(Integer)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Candidates left after each filter, and selected records per quota group."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)


class Evaluation(TenantOwned, Base):
    """Does training on a selection help (LESS tab. 2)? LoRA fine-tuned on each arm's training
    set of one budget from a pool, then scored on a held-out target set: a table per arm with
    bootstrap intervals, training curves and a plot."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    pool_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    target_dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    reward_spec_id: Mapped[str | None] = mapped_column(ForeignKey("reward_specs.id"), index=True)
    """Metric "reward" only: the reward each greedy target response gets."""
    budget: Mapped[int] = mapped_column(Integer)
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """As requested, resolved at creation: every arm's ``name``, and the ``record_ids`` of
    selection, curation and score-set arms (copied, so the arm survives its source)."""
    metric: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    """``EvaluationSettings`` as requested; the worker writes back resolved LoRA values."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The table, curves and provenance; written once the job succeeds."""
    plot_png_key: Mapped[str | None] = mapped_column(String(1024))
    plot_svg_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(lazy="joined", innerjoin=True)


class TaskDelivery(Base):
    """A Celery task in flight, from the moment it is sent until a delivery of it ends.

    Written by ``service.queue.enqueue`` before the message goes out (``deliveries`` 0, the
    payload kept), so a task lost with its broker or its worker can be sent again by the
    recovery sweep (``workers.tasks.recovery``) under the same id. Each delivery adds one to
    ``deliveries`` and beats ``heartbeat_at`` while it runs; every delivery but the latest died
    with its worker, which bounds how often a task that kills its worker comes back
    (``run_tracked`` in ``workers.tasks.jobs``). The row goes when a delivery ends; it stays, as
    the evidence, when its job was failed for too many deliveries."""

    __tablename__ = "task_deliveries"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_name: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The task's keyword arguments, to send it again; None for a task sent by other means."""
    deliveries: Mapped[int] = mapped_column(Integer)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Last sign of life: a beat of the running delivery, or the last (re)send."""
    resent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How often the recovery sweep sent it again."""


# --- webhooks: endpoints, the callback signing secret, the event outbox and its deliveries -----

WEBHOOK_EVENT_TYPES = ("job.started", "job.succeeded", "job.failed", "job.cancelled")
"""As ``service.webhooks.schemas.EventType``; callback_urls get the last three only."""
WEBHOOK_DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class WebhookEndpoint(TenantOwned, Base):
    """A URL a tenant registered for job events; its signing secret is stored sealed and
    shown once, at creation."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(200))
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    """The Fernet token of the endpoint's ``whsec_...`` secret."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookSigningSecret(TenantOwned, Base):
    """The tenant's secret signing deliveries to the ``callback_url`` of its jobs: created or
    rotated by ``POST /v1/webhook-secret`` (shown once); after a rotation the previous secret
    signs too (a second signature) until ``previous_until``."""

    __tablename__ = "webhook_signing_secrets"
    __table_args__ = (UniqueConstraint("tenant_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    ciphertext: Mapped[str] = mapped_column(Text)
    previous_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobCallback(TenantOwned, Base):
    """The ``callback_url`` a job-creating request named: told when the job finishes."""

    __tablename__ = "job_callbacks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))


class WebhookEvent(TenantOwned, Base):
    """The outbox: one row per job event that has somewhere to go, written in the transaction
    that changed the job's status (``service.webhooks.outbox``). ``payload`` is the exact body
    every delivery of it sends. No foreign key to the job: the log outlives a deleted job."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(TenantOwned, Base):
    """One event to one destination (an endpoint, or the job's callback_url), at least once:
    attempted by ``sift.webhook.deliver`` (``workers.tasks.webhooks``), retried with backoff
    until ``SIFT_WEBHOOK_RETRY_FOR_S`` after it was created; the recovery sweep sends again
    what is due and in nobody's hands. Its ``id`` is the ``webhook-id`` of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", WEBHOOK_DELIVERY_STATUSES), name="status"),
        Index(None, "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    """None for a delivery to the job's callback_url (signed with the tenant's secret)."""
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When it is due (pending only)."""
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """An attempt holds it until then: in flight; a lease that ran out lost its worker."""
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When its task was last sent (or is due to arrive, for a delayed send)."""
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(String(500))
    """At most the first 500 characters of the receiver's last answer; nothing more is kept."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    event: Mapped[WebhookEvent] = relationship()
    """(So a flush writes the event before its deliveries.)"""


# Job status changes write their webhook events in the same transaction (an ORM flush event).
import service.webhooks.outbox  # noqa: E402, F401
