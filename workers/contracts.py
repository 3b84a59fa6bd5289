"""What the API and the workers agree on: task names, queues and payloads.

This module is the only part of ``workers`` that ``service`` imports. It must stay free of
torch, transformers and Celery so the API process remains light: the API sends tasks *by name*.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JSON_INT_MAX = 2**53 - 1
"""The largest integer a request may carry (``le=JSON_INT_MAX`` on every unbounded one). Past
int64 a value reaches the database driver or torch and fails there, as a server error or a
failed job, instead of as a 422 naming its field; 2**53 - 1 is within int64 and, unlike
2**63 - 1, exact as a double, which is how FastAPI writes bounds into the OpenAPI document
and how JavaScript clients read numbers."""

GPU_QUEUE = "sift.gpu"
"""Warmup training and gradient featurization: needs the model (and a GPU in production)."""
CPU_QUEUE = "sift.cpu"
"""Streaming score computation over stored feature shards: matmuls, no model."""
EVENTS_QUEUE = "sift.events"
"""Webhook deliveries: short POSTs (each bounded by ``SIFT_WEBHOOK_TIMEOUT_S``) that must not
wait behind an hour of training or scoring, so production runs a worker of its own on it."""

VALUATION_FEATURIZE = "sift.valuation.featurize"
"""Stage 1 of a valuation: warmup checkpoints, then pool (Adam) and probe (SGD) features."""
VALUATION_FEATURIZE_SHARD = "sift.valuation.featurize_shard"
"""One shard (a record range) of one feature set; any number run in parallel on GPU workers.
The last one to finish hands the valuation on to scoring."""
VALUATION_SCORE = "sift.valuation.score"
"""Stage 2 of a valuation: stream pool feature shards against probe features, store the scores."""

STUDY_RUN = "sift.study.run"
"""A strategy study: summed-loss gradients of its datasets at each checkpoint, then RelInf,
s_in / s_cross, verdicts and plots."""

SCORE_SET_RUN = "sift.score_set.run"
"""One score set: a seed 003 scorer over a dataset (model-based ones need the GPU queue)."""

CURATION_RUN = "sift.curation.run"
"""Filter a dataset by score sets, then rank or pick with a diversity algorithm, under quotas
(on the GPU queue: diversity picks may embed records with the model)."""

EVALUATION_RUN = "sift.evaluation.run"
"""An evaluation: fine-tune LoRA on each arm's training set, score the target set, the table."""

WEBHOOK_DELIVER = "sift.webhook.deliver"
"""One attempt of one webhook delivery (a job event to an endpoint or a callback_url): a POST,
no model and never behind a long job: the events queue (``workers.tasks.webhooks``)."""

TASK_QUEUES: dict[str, str] = {
    VALUATION_FEATURIZE: GPU_QUEUE,
    VALUATION_FEATURIZE_SHARD: GPU_QUEUE,
    VALUATION_SCORE: CPU_QUEUE,
    STUDY_RUN: GPU_QUEUE,
    SCORE_SET_RUN: GPU_QUEUE,
    CURATION_RUN: GPU_QUEUE,
    EVALUATION_RUN: GPU_QUEUE,
    WEBHOOK_DELIVER: EVENTS_QUEUE,
}


class ValuationTask(BaseModel):
    """Payload of both valuation stages: everything else is read from the database by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    valuation_id: str


class FeatureShardTask(BaseModel):
    """Payload of a shard task: which shard of which feature set, for which valuation, and all
    the feature sets the valuation waits for (so the last shard knows when featurizing is done)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    valuation_id: str
    feature_set_id: str
    shard_index: int = Field(ge=0)
    feature_set_ids: list[str] = Field(min_length=1)


class StudyTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    study_id: str


class ScoreSetTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score_set_id: str


class WebhookDeliveryTask(BaseModel):
    """Payload of ``sift.webhook.deliver``: the row says the rest (``webhook_deliveries``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delivery_id: str


# --- Valuation settings: the wire format the API validates and the worker resolves. ------------
# ``None`` means "the model's default", resolved by the worker and written back to the valuation
# (LESS's r=128, alpha=512 for real models; scaled down for the builtin tiny model).

BUILTIN_MODELS: dict[str, str] = {
    "builtin:tiny-llama": "random-init 2-layer Llama (hidden 64) with a byte-level tokenizer; CPU",
}
"""Models built in code, needing no files or hub (tests and the demo)."""

Method = Literal[
    "less",
    "tracin",
    "tracin_adam",
    "nice",
    "datainf",
    "nice_if",
    "self_influence",
    "self_influence_adam",
    "self_influence_token_weighted",
]
"""``tracin``: TracIn as published (plain gradients on both sides); ``tracin_adam``: LESS's
Adam pool features against plain probe gradients, inner product (what ``tracin`` meant before
migration 0012, which renamed the valuations computed that way); ``self_influence`` and
``self_influence_adam``: TracIn's self-influence Σ_e η̄_e ‖φ_e(z)‖² of each pool record, on its
plain gradients or its Adam features (no probes; ``workers.engine.self_influence``);
``self_influence_token_weighted``: each record's plain self-influence times its response tokens,
as the token-mean warmup loss weighs the record's training step."""
SELF_INFLUENCE_METHODS: tuple[str, ...] = (
    "self_influence",
    "self_influence_adam",
    "self_influence_token_weighted",
)
"""Methods that value each pool record by itself: they take no probe dataset, and reuse the
pool features of a ``tracin`` (SGD) or ``less`` / ``tracin_adam`` (Adam) valuation."""
POLICY_METHODS: tuple[str, ...] = ("nice", "nice_if")
"""Methods whose probe side is NICE's policy gradient of a reward (they need a reward spec).

What the API validates with. Each method is defined in the engine (``workers.engine.methods``:
its features, checkpoints, projection, scorer), which the API process may not import;
tests/workers/test_valuation_methods.py holds ``Method`` and these two equal to it."""
ComputeDtype = Literal["float32", "bfloat16", "float16"]


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    r: int | None = Field(None, ge=1, le=1024, description="LoRA rank; default 128 (8 for builtin)")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default 4*r as in LESS")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class WarmupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    fraction: float = Field(0.05, gt=0.0, le=1.0, description="seeded random fraction of the pool")
    epochs: int = Field(4, ge=1, le=100)
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1, le=4096)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0, le=JSON_INT_MAX)


class ProjectionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dim: int = Field(8192, ge=1, le=1 << 20, description="projected feature dimension d")
    seed: int = Field(0, ge=0, le=JSON_INT_MAX)


class AssistEndpoint(BaseModel):
    """NICE-AMC's stronger model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base_url: str = Field(
        pattern=r"^https?://",
        max_length=2000,
        description="e.g. https://host/v1; a public https URL unless the operator allowlists "
        "the host (SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
    )
    model: str = Field(min_length=1, max_length=200, description="the endpoint's model name")
    n: int = Field(4, ge=1, le=64, description="responses per probe")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=8192)
    timeout_s: float = Field(60.0, gt=0.0, le=600.0)
    retries: int = Field(2, ge=0, le=10)
    api_key_secret: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="name of one of the tenant's secrets (POST /v1/secrets, or a worker "
        "variable an operator granted with `sift secrets grant`) holding the API key; sent as "
        "a bearer token, never returned or logged",
    )


class NiceSpec(BaseModel):
    """NICE's Monte-Carlo policy gradient (seed 002 §3; defaults from app. C.1)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    samples: int = Field(20, ge=1, le=1024, description="M responses per probe and checkpoint")
    temperature: float = Field(1.2, gt=0.0, le=10.0)
    top_k: int = Field(50, ge=0, le=JSON_INT_MAX)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1, le=8192)
    seed: int = Field(0, ge=0, le=JSON_INT_MAX)
    weighting: Literal["reinforce", "baseline", "rejection"] = Field(
        "reinforce",
        description="sample weights: r/M, (r - mean r)/M (baseline), or r over the samples "
        "with r > 0 (rejection)",
    )
    generation_batch_size: int = Field(8, ge=1, le=1024, description="probe prompts per batch")
    assist_endpoint: AssistEndpoint | None = Field(
        None,
        description="NICE-AMC: fetch the stronger model's responses from this endpoint "
        "(instead of an assist dataset); fetched once per valuation, reused at every checkpoint",
    )


class DataInfSpec(BaseModel):
    """DataInf and NICE-IF (seed 002 app. E.3): the damped per-layer Fisher at the last
    checkpoint, inverted by Sherman–Morrison."""

    model_config = ConfigDict(extra="forbid", strict=True)

    damping: float = Field(0.1, gt=0.0, le=1e6, description="λ, or its scale (relative_damping)")
    relative_damping: bool = Field(
        True,
        description="λ_l = damping · Σ_i ‖g_il‖² / (n d_l), the pool's mean squared gradient "
        "coordinate of layer l (one LoRA weight tensor, d_l its parameter count): DataInf's "
        "default with damping 0.1; False: λ_l = damping (seed 002 used 1e-4 on 2048-d "
        "projections)",
    )
    dim_per_layer: int | None = Field(
        None,
        ge=1,
        le=1 << 16,
        description="projected width per layer (LoRA weight tensor); a tensor with no more "
        "parameters is kept whole; default 1024 (512 builtin: exact)",
    )


class ValuationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    warmup: WarmupSpec = Field(default_factory=lambda: WarmupSpec())
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec())
    projection: ProjectionSpec = Field(default_factory=lambda: ProjectionSpec())
    max_length: int = Field(512, ge=8, le=1 << 16, description="tokens per example; longer is cut")
    system_prompt: str | None = Field(
        None,
        max_length=20_000,
        description="the system prompt of records without one of their own: null keeps the "
        "chat template's default (SmolLM2's adds 21 tokens to every record), a text sets it, "
        '"" drops it (no system turn at all); NICE formats its probe prompts the same way',
    )
    batch_size: int = Field(8, ge=1, le=4096, description="featurization batch size")
    shard_size: int = Field(1024, ge=1, le=1 << 20, description="pool records per feature shard")
    adam_bias_correction: bool = Field(
        False, description="LESS's code uses raw moments (False); NICE app. F writes 1-beta^t"
    )
    dtype: ComputeDtype = "float32"
    nice: NiceSpec = Field(
        default_factory=lambda: NiceSpec(), description="used by methods 'nice' and 'nice_if'"
    )
    datainf: DataInfSpec = Field(
        default_factory=lambda: DataInfSpec(),
        description="used by methods 'datainf' and 'nice_if'",
    )


class StudySettings(BaseModel):
    """How a strategy study computes gradients and reports spread (seed 001 §3-4)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    projection: ProjectionSpec = Field(
        default_factory=lambda: ProjectionSpec(),
        description="random projection of the LoRA gradients before the inner products "
        "(RelInf(z, z) stays exactly 1)",
    )
    max_length: int = Field(512, ge=8, le=1 << 16, description="tokens per example; longer is cut")
    batch_size: int = Field(8, ge=1, le=4096, description="featurization batch size")
    dtype: ComputeDtype = "float32"
    bootstrap: int = Field(1000, ge=1, le=100_000, description="bootstrap resamples of the pairs")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of the bootstrap interval")
    seed: int = Field(0, ge=0, le=JSON_INT_MAX, description="seed of the bootstrap")


# --- Score sets (seed 003 toolbox): which scorer, what it needs, which columns it writes. -------

Scorer = Literal["quality", "text", "knn", "random", "bm25", "dsir", "rds", "reward"]
SCORERS: tuple[str, ...] = ("quality", "text", "knn", "random", "bm25", "dsir", "rds", "reward")
IMPORTANCE_SCORERS: tuple[str, ...] = ("random", "bm25", "dsir", "rds")
"""Scored against a probe dataset and aggregated like LESS (mean within a probe subtask, max
over subtasks); their sets hold a "score" column and one "subtask:<name>" column per subtask."""
EMBEDDING_SCORERS: tuple[str, ...] = ("knn", "rds")
"""Need record embeddings (``ScoreSetSettings.embedding``)."""
QUALITY_COLUMNS: tuple[str, ...] = (
    "nll",
    "perplexity",
    "el2n",
    "u_entropy",
    "u_confidence",
    "u_margin",
    "u_min_margin",
)
IFD_COLUMNS: tuple[str, ...] = ("nll_a", "ifd")
TEXT_COLUMNS: tuple[str, ...] = (
    "prompt_chars",
    "prompt_words",
    "response_chars",
    "response_words",
    "ttr",
    "mtld",
    "distinct_1",
    "distinct_2",
)
REWARD_COLUMNS: tuple[str, ...] = ("reward",)
"""Scorer "reward" (seed 003 eq. 9, R_i = r(Q_i, A_i)): each record's response scored by the
set's reward spec as a response to its prompt. Label kinds (``REWARD_NEEDS_LABEL``) compare
with the record's ``metadata.label``, which every record must then carry (a non-empty string)."""
REPORT_N_CLUSTERS = 8
"""knn's dataset-level report: k-means clusters when ``ScoreSetSettings.n_clusters`` is unset
(fewer for a dataset of fewer records)."""


class SentenceTransformerEmbedding(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sentence_transformer: str = Field(
        min_length=1, max_length=1024, description="local path of a sentence-transformers model"
    )


class ScoreSetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_length: int = Field(512, ge=8, le=1 << 16, description="tokens per example; longer is cut")
    batch_size: int = Field(8, ge=1, le=4096)
    dtype: ComputeDtype = "float32"
    ifd: bool = Field(True, description="quality: also NLL of the response alone and IFD")
    embedding: Literal["lm", "tfidf"] | SentenceTransformerEmbedding = Field(
        "tfidf",
        description="knn and rds: the model's mean last hidden state ('lm', needs model_id), "
        "TF-IDF of the text, or a local sentence-transformers model",
    )
    k: int = Field(5, ge=1, le=1000, description="knn: the k of the k-th nearest neighbour")
    n_clusters: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="knn: k-means clusters of the dataset-level report's inertia (at most the "
        "dataset's records); default min(8, records), written back on creation",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,  # k-means takes a numpy RandomState seed, 32 bits
        description="random: the seed of the scores; knn: of k-means",
    )
    dsir_buckets: int = Field(10_000, ge=2, le=1 << 24, description="dsir: hashed n-gram buckets")
    dsir_smoothing: float = Field(0.01, gt=0.0, le=100.0, description="dsir: pseudo-count")
    bm25_k1: float = Field(1.5, gt=0.0, le=100.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)


def scorer_needs_model(scorer: str, settings: ScoreSetSettings) -> bool:
    """Quality scores come from a model; so do LM embeddings."""
    return scorer == "quality" or (scorer in EMBEDDING_SCORERS and settings.embedding == "lm")


# --- Reward specs (NICE, seed 002 §3): how a sampled response to a probe prompt is scored. -------
# The engine (workers.engine.rewards) implements each kind; the API stores specs as resources.


def _tag_required(tag: str) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` of a variant of a discriminated union: the input must carry the
    tag (pydantic cannot pick a variant without it), so the document says it is required; the
    field keeps its default for Python callers."""

    def extra(schema: dict[str, Any]) -> None:
        required = schema.setdefault("required", [])
        if tag not in required:
            required.insert(0, tag)

    return extra


class _RewardBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_tag_required("kind"))


class ExactMatchReward(_RewardBase):
    """1 if the response equals the probe's label (after optional whitespace/case folding)."""

    kind: Literal["exact_match"] = "exact_match"
    ignore_case: bool = True
    strip: bool = True


class ContainsReward(_RewardBase):
    """1 if the probe's label occurs in the response."""

    kind: Literal["contains"] = "contains"
    ignore_case: bool = True


class RegexReward(_RewardBase):
    """1 if ``pattern`` matches the response and its first group (or the whole match) equals
    the label; the pattern extracts the answer, e.g. ``answer is (\\-?\\d+)``."""

    kind: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1, max_length=2000)
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class NumericReward(_RewardBase):
    """1 if the last number in the response is within tolerance of the numeric label."""

    kind: Literal["numeric"] = "numeric"
    abs_tol: float = Field(1e-6, ge=0.0)
    rel_tol: float = Field(0.0, ge=0.0)


class PythonTestsReward(_RewardBase):
    """HumanEval-style: the program (prompt + response, or the response alone) is run with the
    probe's test code (``metadata.test``) and ``check(<metadata.entry_point>)`` in a sandbox:
    reward 1 if it passes, 0 if it fails, errors, or breaks a limit. Needs no label."""

    kind: Literal["python_tests"] = "python_tests"
    program: Literal["prompt+response", "response"] = "prompt+response"
    timeout_s: float = Field(10.0, gt=0.0, le=300.0, description="wall-clock limit")
    cpu_time_s: int = Field(10, ge=1, le=300)
    memory_mb: int = Field(1024, ge=64, le=65536, description="address-space limit")
    max_processes: int = Field(8, ge=1, le=256, description="processes the candidate may own")
    max_file_mb: int = Field(16, ge=1, le=4096, description="largest file it may write")


class RewardModelReward(_RewardBase):
    """Score of a Hugging Face sequence-classification model (local path) on prompt+response:
    the logit of ``label_index``, or the single logit of a one-output head. Needs no label."""

    kind: Literal["reward_model"] = "reward_model"
    model_path: str = Field(min_length=1, max_length=1024)
    label_index: int = Field(0, ge=0, le=JSON_INT_MAX)
    batch_size: int = Field(16, ge=1, le=1024)


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")


class HttpJudgeReward(_RewardBase):
    """An HTTP judge: POST ``{"probe_id", "prompt", "response", "label"}`` (label may be null),
    expecting ``{"reward": <number>}``; bounded timeout and retries. Needs no label."""

    kind: Literal["http_judge"] = "http_judge"
    url: str = Field(
        pattern=r"^https?://",
        max_length=2000,
        description="a public https URL unless the operator allowlists the host "
        "(SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
    )
    timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    retries: int = Field(2, ge=0, le=10)
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="sent with every request (e.g. Authorization); write-only: stored sealed, "
        "shown as <redacted>. Names are HTTP tokens, values printable ASCII",
    )

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name[:40]!r} is not an HTTP token")
            if len(value) > 8000 or not _HEADER_VALUE.match(value):
                raise ValueError(  # never echo the value: it is a secret
                    f"the value of header {name!r} must be printable ASCII, at most 8000 characters"
                )
        return headers


RewardSpec = Annotated[
    ExactMatchReward
    | ContainsReward
    | RegexReward
    | NumericReward
    | PythonTestsReward
    | RewardModelReward
    | HttpJudgeReward,
    Field(discriminator="kind"),
]
"""One reward definition; ``kind`` selects the variant."""

REWARD_NEEDS_LABEL: dict[str, bool] = {
    "exact_match": True,
    "contains": True,
    "regex": True,
    "numeric": True,
    "python_tests": False,
    "reward_model": False,
    "http_judge": False,
}
"""Whether probes scored by a kind must carry a label (their response); the others accept
probes with a prompt only."""


# --- Curations: compose score sets into a selection (seed 003 §2 eqs. 4-5, §4.3). --------------


class CurationTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    curation_id: str


class ScoreRef(BaseModel):
    """One column of a succeeded score set over the curation's dataset."""

    model_config = ConfigDict(extra="forbid", strict=True)

    score_set_id: str
    column: str = Field(min_length=1, max_length=200)
    order: Literal["desc", "asc"] = Field(
        "desc", description="desc: higher is better (e.g. importance); asc: lower (e.g. nll)"
    )


class ScoreFilter(BaseModel):
    """Keep records whose value lies strictly between thresholds (eq. 4) and whose percentile
    among the dataset's values, 100·F̂(f(x)), lies within [min_percentile, max_percentile]
    (eq. 5). A record with no value in the column is dropped."""

    model_config = ConfigDict(extra="forbid", strict=True)

    score_set_id: str
    column: str = Field(min_length=1, max_length=200)
    min: float | None = Field(None, description="τ_min (exclusive)")
    max: float | None = Field(None, description="τ_max (exclusive)")
    min_percentile: float | None = Field(None, ge=0.0, le=100.0)
    max_percentile: float | None = Field(None, ge=0.0, le=100.0)


class RankPick(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["rank"] = "rank"
    by: ScoreRef


class RandomPick(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["random"] = "random"
    seed: int = Field(0, ge=0, le=JSON_INT_MAX)


class KCenterPick(BaseModel):
    """k-center greedy (seed 003 alg. 2) in the embedding space."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["k_center"] = "k_center"
    seed: int = Field(0, ge=0, le=JSON_INT_MAX, description="draws the first centre")


class HerdingPick(BaseModel):
    """Kernel herding (alg. 3): match the mean embedding of the candidates."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["herding"] = "herding"


class QditPick(BaseModel):
    """QDIT (alg. 5): maximise (1 - α)·facility-location diversity + α·quality."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["qdit"] = "qdit"
    quality: ScoreRef
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="0: pure diversity; 1: pure quality")


class DeitaPick(BaseModel):
    """DEITA (alg. 6): best score first, skipping records within cosine distance τ of a pick."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=_tag_required("method")
    )

    method: Literal["deita"] = "deita"
    score: ScoreRef
    tau: float = Field(0.1, gt=0.0, le=2.0, description="DEITA's similarity 0.9 is τ = 0.1")


Pick = Annotated[
    RankPick | RandomPick | KCenterPick | HerdingPick | QditPick | DeitaPick,
    Field(discriminator="method"),
]
EMBEDDING_PICKS: tuple[str, ...] = ("k_center", "herding", "qdit", "deita")


class Quota(BaseModel):
    """At most ``max_per_group`` records per group (a subtask, or a metadata field's value)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    by: str = Field(
        "subtask",
        pattern=r"^(subtask|metadata\.[A-Za-z0-9_.-]+)$",
        description="'subtask' or 'metadata.<field>'",
    )
    max_per_group: int = Field(ge=1, le=JSON_INT_MAX)


class CurationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    embedding: Literal["lm", "tfidf"] | SentenceTransformerEmbedding = Field(
        "tfidf", description="the space of the diversity picks (as for score sets)"
    )
    max_length: int = Field(512, ge=8, le=1 << 16)
    batch_size: int = Field(8, ge=1, le=4096)
    dtype: ComputeDtype = "float32"


# --- Evaluations: does training on a selection help? (LESS tab. 2) ------------------------------


class EvaluationTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    evaluation_id: str


class TrainingSpec(BaseModel):
    """The fine-tuning every arm gets (the warmup trainer on the arm's whole training set)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1, le=4096)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = Field(
        0,
        ge=0,
        le=JSON_INT_MAX,
        description="LoRA initialisation, batch order and dropout: the same for every arm",
    )


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec())
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec())
    max_length: int = Field(512, ge=8, le=1 << 16, description="tokens per example; longer is cut")
    system_prompt: str | None = Field(
        None,
        max_length=20_000,
        description="as a valuation's: the system prompt of records without one of their own "
        '(null keeps the chat template\'s default, a text sets it, "" drops the system turn); '
        "applied to the training sets, the target records, the greedy responses' prompts and "
        "the multiple-choice questions alike",
    )
    batch_size: int = Field(8, ge=1, le=4096, description="target-set scoring batch size")
    dtype: ComputeDtype = "float32"
    max_new_tokens: int = Field(
        128, ge=1, le=8192, description="reward metrics: length cap of the greedy response"
    )
    bootstrap: int = Field(1000, ge=1, le=100_000, description="bootstrap resamples of the targets")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="level of the bootstrap interval")
    bootstrap_seed: int = Field(0, ge=0, le=2**32 - 1)


def _arm_config() -> ConfigDict:
    return ConfigDict(extra="forbid", strict=True, json_schema_extra=_tag_required("kind"))


_ARM_NAME = Field(
    None,
    min_length=1,
    max_length=100,
    description="the arm's row label; default from its kind and source (unique per evaluation)",
)


class SelectionArm(BaseModel):
    """The first ``budget`` records (rank order) of a selection of a valuation of the pool."""

    model_config = _arm_config()
    kind: Literal["selection"] = "selection"
    name: str | None = _ARM_NAME
    selection_id: str


class CurationArm(BaseModel):
    """The first ``budget`` records (pick order) of a succeeded curation of the pool."""

    model_config = _arm_config()
    kind: Literal["curation"] = "curation"
    name: str | None = _ARM_NAME
    curation_id: str


class ScoreSetArm(BaseModel):
    """The top ``budget`` records of a succeeded score set's column over the pool (ties by
    record id; records without a value never chosen)."""

    model_config = _arm_config()
    kind: Literal["score_set"] = "score_set"
    name: str | None = _ARM_NAME
    score_set_id: str
    column: str = Field("score", min_length=1, max_length=200)
    order: Literal["desc", "asc"] = Field("desc", description="desc: the highest values first")


class RandomArm(BaseModel):
    """``budget`` records drawn uniformly from the pool, once per seed (the spread over seeds
    is reported)."""

    model_config = _arm_config()
    kind: Literal["random"] = "random"
    name: str | None = _ARM_NAME
    seeds: list[Annotated[int, Field(ge=0, le=JSON_INT_MAX)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, max_length=20
    )


class FullArm(BaseModel):
    """Every record of the pool (the budget does not apply)."""

    model_config = _arm_config()
    kind: Literal["full"] = "full"
    name: str | None = _ARM_NAME


Arm = Annotated[
    SelectionArm | CurationArm | ScoreSetArm | RandomArm | FullArm, Field(discriminator="kind")
]
ARM_KINDS: tuple[str, ...] = ("selection", "curation", "score_set", "random", "full")


class RewardMetric(BaseModel):
    """The reward of each target prompt's greedy response under a reward spec. Label kinds
    compare with the record's ``metadata.label`` when it is a non-empty string, else with the
    record's response (GSM8K-style: a ``numeric`` reward reads the last number of each);
    ``python_tests`` runs the record's ``metadata.test`` and ``metadata.entry_point``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_tag_required("kind"))
    kind: Literal["reward"] = "reward"
    reward_spec_id: str


class MultipleChoiceMetric(BaseModel):
    """Accuracy: the answer is the choice whose log-likelihood as the response is highest.
    Every target record carries ``metadata.choices`` (at least two distinct strings) and
    ``metadata.answer`` (a 0-based index into them, or the correct choice's text)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_tag_required("kind"))
    kind: Literal["multiple_choice"] = "multiple_choice"
    length_normalized: bool = Field(
        False, description="compare mean per-token log-likelihoods instead of sums"
    )


Metric = Annotated[RewardMetric | MultipleChoiceMetric, Field(discriminator="kind")]
