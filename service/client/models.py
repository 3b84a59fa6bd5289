"""Request and response models of the Sift API, generated from its OpenAPI document.

Do not edit: ``python -m service.client.regenerate`` writes this file, and a test fails when it
differs from what the current routes generate.
"""

# ruff: noqa: E501

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(max_length=200, min_length=1, title="Name")]
    role: Annotated[Literal["admin", "member", "read_only"] | None, Field(title="Role")] = "member"


class ApiKeyCreated(BaseModel):
    id: Annotated[str, Field(title="Id")]
    name: Annotated[str, Field(title="Name")]
    role: Annotated[str, Field(title="Role")]
    prefix: Annotated[
        str,
        Field(description="the key's first characters, to tell keys apart", title="Prefix"),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    revoked_at: Annotated[datetime | None, Field(title="Revoked At")]
    key: Annotated[
        str,
        Field(
            description="the API key itself: shown this once, stored only hashed",
            title="Key",
        ),
    ]


class ApiKeyRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    name: Annotated[str, Field(title="Name")]
    role: Annotated[str, Field(title="Role")]
    prefix: Annotated[
        str,
        Field(description="the key's first characters, to tell keys apart", title="Prefix"),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    revoked_at: Annotated[datetime | None, Field(title="Revoked At")]


class ArmRead(BaseModel):
    kind: Annotated[str, Field(title="Kind")]
    name: Annotated[str, Field(title="Name")]
    n_records: Annotated[
        int | None,
        Field(description="training records; null for 'full' until run", title="N Records"),
    ]
    selection_id: Annotated[str | None, Field(title="Selection Id")] = None
    curation_id: Annotated[str | None, Field(title="Curation Id")] = None
    score_set_id: Annotated[str | None, Field(title="Score Set Id")] = None
    column: Annotated[str | None, Field(title="Column")] = None
    order: Annotated[str | None, Field(title="Order")] = None
    seeds: Annotated[list[int] | None, Field(title="Seeds")] = None
    reference: Annotated[
        bool | None,
        Field(description="the arm the others are compared with", title="Reference"),
    ] = False


class AssistEndpoint(BaseModel):
    """
    NICE-AMC's stronger model behind an OpenAI-compatible ``/chat/completions`` endpoint.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    base_url: Annotated[
        str,
        Field(
            description="e.g. https://host/v1; a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
            max_length=2000,
            pattern="^https?://",
            title="Base Url",
        ),
    ]
    model: Annotated[
        str,
        Field(
            description="the endpoint's model name",
            max_length=200,
            min_length=1,
            title="Model",
        ),
    ]
    n: Annotated[int | None, Field(description="responses per probe", ge=1, le=64, title="N")] = 4
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0, title="Temperature")] = 1.0
    max_tokens: Annotated[int | None, Field(ge=1, le=8192, title="Max Tokens")] = 512
    timeout_s: Annotated[float | None, Field(gt=0.0, le=600.0, title="Timeout S")] = 60.0
    retries: Annotated[int | None, Field(ge=0, le=10, title="Retries")] = 2
    api_key_secret: Annotated[
        str | None,
        Field(
            description="name of one of the tenant's secrets (POST /v1/secrets, or a worker variable an operator granted with `sift secrets grant`) holding the API key; sent as a bearer token, never returned or logged",
            pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
            title="Api Key Secret",
        ),
    ] = None


class CheckpointRead(BaseModel):
    epoch: Annotated[
        int,
        Field(description="1-based position of the checkpoint in the run", title="Epoch"),
    ]
    step: Annotated[
        int,
        Field(description="optimizer steps taken when the adapter was saved", title="Step"),
    ]
    learning_rate: Annotated[
        float,
        Field(
            description="mean learning rate of the steps before this checkpoint (uploads: as given)",
            title="Learning Rate",
        ),
    ]
    has_optimizer_state: Annotated[
        bool,
        Field(
            description="Adam moments stored (Sift-trained runs); uploads have none",
            title="Has Optimizer State",
        ),
    ]


class CompareSide(BaseModel):
    score_set_id: Annotated[str, Field(title="Score Set Id")]
    column: Annotated[str, Field(title="Column")]
    order: Annotated[Literal["asc", "desc"], Field(title="Order")]


class ContainsReward(BaseModel):
    """
    1 if the probe's label occurs in the response.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["contains"], Field(title="Kind")]
    ignore_case: Annotated[bool | None, Field(title="Ignore Case")] = True


class CurationArm(BaseModel):
    """
    The first ``budget`` records (pick order) of a succeeded curation of the pool.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["curation"], Field(title="Kind")]
    name: Annotated[
        str | None,
        Field(
            description="the arm's row label; default from its kind and source (unique per evaluation)",
            max_length=100,
            min_length=1,
            title="Name",
        ),
    ] = None
    curation_id: Annotated[str, Field(title="Curation Id")]


class DataInfSpec(BaseModel):
    """
    DataInf and NICE-IF (seed 002 app. E.3): the damped per-layer Fisher at the last
    checkpoint, inverted by Sherman–Morrison.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    damping: Annotated[
        float | None,
        Field(
            description="λ, or its scale (relative_damping)",
            gt=0.0,
            le=1000000.0,
            title="Damping",
        ),
    ] = 0.1
    relative_damping: Annotated[
        bool | None,
        Field(
            description="λ_l = damping · Σ_i ‖g_il‖² / (n d_l), the pool's mean squared gradient coordinate of layer l (one LoRA weight tensor, d_l its parameter count): DataInf's default with damping 0.1; False: λ_l = damping (seed 002 used 1e-4 on 2048-d projections)",
            title="Relative Damping",
        ),
    ] = True
    dim_per_layer: Annotated[
        int | None,
        Field(
            description="projected width per layer (LoRA weight tensor); a tensor with no more parameters is kept whole; default 1024 (512 builtin: exact)",
            ge=1,
            le=65536,
            title="Dim Per Layer",
        ),
    ] = None


class DeliveryRead(BaseModel):
    """
    One event to one destination. ``id`` is the ``webhook-id`` header of every attempt
    (the receiver's idempotency key).
    """

    id: Annotated[str, Field(title="Id")]
    event_id: Annotated[str, Field(title="Event Id")]
    event_type: Annotated[str, Field(title="Event Type")]
    job_id: Annotated[str, Field(title="Job Id")]
    webhook_id: Annotated[
        str | None,
        Field(
            description="the endpoint; null for a job's callback_url",
            title="Webhook Id",
        ),
    ]
    destination: Annotated[Literal["webhook", "callback_url"], Field(title="Destination")]
    url: Annotated[str, Field(title="Url")]
    status: Annotated[Literal["pending", "succeeded", "failed"], Field(title="Status")]
    attempts: Annotated[int, Field(title="Attempts")]
    in_flight: Annotated[bool, Field(description="an attempt holds it now", title="In Flight")]
    next_attempt_at: Annotated[
        datetime | None,
        Field(description="when a pending delivery is due", title="Next Attempt At"),
    ]
    last_attempt_at: Annotated[datetime | None, Field(title="Last Attempt At")]
    last_status_code: Annotated[int | None, Field(title="Last Status Code")]
    last_error: Annotated[str | None, Field(title="Last Error")]
    response_excerpt: Annotated[
        str | None,
        Field(
            description="always null: no part of a receiver's answer is stored (its status code and a short error are); kept for compatibility",
            title="Response Excerpt",
        ),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class DifferenceRead(BaseModel):
    mean: Annotated[
        float,
        Field(
            description="mean over target examples of this arm minus the reference",
            title="Mean",
        ),
    ]
    low: Annotated[float, Field(description="paired bootstrap interval, lower end", title="Low")]
    high: Annotated[float, Field(title="High")]


class DiversityReportRead(BaseModel):
    """
    Dataset-level diversity of a knn set's embeddings (seed 003 §4.1-4.2).
    """

    n: Annotated[int, Field(description="records", title="N")]
    vendi: Annotated[
        float,
        Field(
            description="Vendi score with the cosine kernel: the effective number of distinct records, in [1, min(n, embedding dim)]",
            title="Vendi",
        ),
    ]
    knn_mean: Annotated[
        float,
        Field(
            description="D^kNN (eq. 28): the mean distance to the k-th nearest other record, i.e. the mean of the knn_distance column",
            title="Knn Mean",
        ),
    ]
    k: Annotated[int, Field(title="K")]
    inertia: Annotated[
        float,
        Field(
            description="D^inertia (eq. 29) of seeded k-means on the unit rows",
            title="Inertia",
        ),
    ]
    n_clusters: Annotated[int, Field(title="N Clusters")]
    seed: Annotated[int, Field(description="the k-means seed (settings.seed)", title="Seed")]


class DuplicateRead(BaseModel):
    index: Annotated[
        int,
        Field(
            description="0-based position of the skipped record in the upload",
            title="Index",
        ),
    ]
    record_id: Annotated[str, Field(title="Record Id")]
    duplicate_of: Annotated[
        str,
        Field(
            description="record_id of the kept record with the same content",
            title="Duplicate Of",
        ),
    ]


class EpochLossRead(BaseModel):
    epoch: Annotated[
        int,
        Field(
            description="1-based; its checkpoint is the run's checkpoint of that epoch",
            title="Epoch",
        ),
    ]
    step: Annotated[int, Field(description="the optimizer step that ends the epoch", title="Step")]
    train_loss: Annotated[
        float,
        Field(description="the mean of the epoch's step losses", title="Train Loss"),
    ]


class ErrorBody(BaseModel):
    code: Annotated[str, Field(title="Code")]
    message: Annotated[str, Field(title="Message")]
    field: Annotated[str | None, Field(title="Field")] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ExactMatchReward(BaseModel):
    """
    1 if the response equals the probe's label (after optional whitespace/case folding).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["exact_match"], Field(title="Kind")]
    ignore_case: Annotated[bool | None, Field(title="Ignore Case")] = True
    strip: Annotated[bool | None, Field(title="Strip")] = True


class ExampleRead(BaseModel):
    record_id: Annotated[str, Field(description="a target record", title="Record Id")]
    loss: Annotated[
        dict[str, float],
        Field(
            description="per arm (by name) its response loss on this record, the mean over seeds",
            title="Loss",
        ),
    ]
    metric: Annotated[
        dict[str, Any] | None,
        Field(description="per arm its metric; null without one", title="Metric"),
    ]
    base_loss: Annotated[float, Field(description="the untrained model's loss", title="Base Loss")]
    base_metric: Annotated[float | None, Field(title="Base Metric")]


class FullArm(BaseModel):
    """
    Every record of the pool (the budget does not apply).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["full"], Field(title="Kind")]
    name: Annotated[
        str | None,
        Field(
            description="the arm's row label; default from its kind and source (unique per evaluation)",
            max_length=100,
            min_length=1,
            title="Name",
        ),
    ] = None


class Health(BaseModel):
    status: Annotated[str, Field(title="Status")]


class HealthRead(BaseModel):
    status: Annotated[
        str,
        Field(
            description="UP: the backend answers (the valuation may still run)",
            title="Status",
        ),
    ]
    model_class: Annotated[str, Field(title="Model Class")]
    valuation_id: Annotated[str, Field(title="Valuation Id")]
    valuation_status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Valuation Status",
        ),
    ]


class HeldoutEpochRead(BaseModel):
    epoch: Annotated[
        int,
        Field(
            description="1-based; the loss is measured at that epoch's checkpoint",
            title="Epoch",
        ),
    ]
    step: Annotated[int, Field(description="the optimizer step that ends the epoch", title="Step")]
    loss: Annotated[
        float,
        Field(
            description="the mean over the held-out records of each record's mean NLL per response token (every record counts once), in eval mode (no dropout)",
            title="Loss",
        ),
    ]


class HeldoutRead(BaseModel):
    dataset_id: Annotated[
        str,
        Field(
            description="the held-out set it was first measured on (a valuation's warmup_eval_dataset_id; it may since have been deleted); the same content under another id reuses the entry",
            title="Dataset Id",
        ),
    ]
    content_hash: Annotated[
        str, Field(description="the held-out set's content hash", title="Content Hash")
    ]
    max_length: Annotated[
        int,
        Field(
            description="the valuation's max_length it was tokenized with",
            title="Max Length",
        ),
    ]
    system_prompt: Annotated[
        str | None,
        Field(description="the valuation's system prompt, if any", title="System Prompt"),
    ]
    n_records: Annotated[int, Field(description="held-out records scored", title="N Records")]
    n_skipped: Annotated[
        int,
        Field(
            description="held-out records left out: no response token fit in max_length",
            title="N Skipped",
        ),
    ]
    epochs: Annotated[
        list[HeldoutEpochRead],
        Field(description="one per checkpoint of the run", title="Epochs"),
    ]


class HerdingPick(BaseModel):
    """
    Kernel herding (alg. 3): match the mean embedding of the candidates.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["herding"], Field(title="Method")]


class Histogram(BaseModel):
    edges: Annotated[
        list[float], Field(description="bin edges, one more than counts", title="Edges")
    ]
    counts: Annotated[list[int], Field(title="Counts")]


class HttpJudgeReward(BaseModel):
    """
    An HTTP judge: POST ``{"probe_id", "prompt", "response", "label"}`` (label may be null),
    expecting ``{"reward": <number>}``; bounded timeout and retries. Needs no label.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["http_judge"], Field(title="Kind")]
    url: Annotated[
        str,
        Field(
            description="a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
            max_length=2000,
            pattern="^https?://",
            title="Url",
        ),
    ]
    timeout_s: Annotated[float | None, Field(gt=0.0, le=600.0, title="Timeout S")] = 30.0
    retries: Annotated[int | None, Field(ge=0, le=10, title="Retries")] = 2
    headers: Annotated[
        dict[str, str] | None,
        Field(
            description="sent with every request (e.g. Authorization); write-only: stored sealed, shown as <redacted>. Names are HTTP tokens, values printable ASCII",
            max_length=20,
            title="Headers",
        ),
    ] = None


class IntervalRead(BaseModel):
    mean: Annotated[
        float,
        Field(description="the mean over the target set (and over seeds)", title="Mean"),
    ]
    low: Annotated[
        float,
        Field(
            description="bootstrap interval over target examples, lower end",
            title="Low",
        ),
    ]
    high: Annotated[float, Field(title="High")]
    per_seed: Annotated[
        list[float],
        Field(description="each run's mean (one run unless random)", title="Per Seed"),
    ]
    seed_std: Annotated[
        float | None,
        Field(description="std over seeds (ddof 1); null for one run", title="Seed Std"),
    ]


class KCenterPick(BaseModel):
    """
    k-center greedy (seed 003 alg. 2) in the embedding space.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["k_center"], Field(title="Method")]
    seed: Annotated[
        int | None,
        Field(
            description="draws the first centre",
            ge=0,
            le=9007199254740991,
            title="Seed",
        ),
    ] = 0


class LabelStudioWebhookRead(BaseModel):
    status: Annotated[str, Field(title="Status")]
    action: Annotated[str | None, Field(title="Action")]


class LoraRead(BaseModel):
    r: Annotated[int, Field(title="R")]
    alpha: Annotated[float, Field(title="Alpha")]
    dropout: Annotated[
        float,
        Field(
            description="0 for uploaded runs (not known, and not needed)",
            title="Dropout",
        ),
    ]
    target_modules: Annotated[list[str], Field(title="Target Modules")]


class LoraSpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    r: Annotated[
        int | None,
        Field(
            description="LoRA rank; default 128 (8 for builtin)",
            ge=1,
            le=1024,
            title="R",
        ),
    ] = None
    alpha: Annotated[
        float | None,
        Field(description="LoRA alpha; default 4*r as in LESS", gt=0.0, title="Alpha"),
    ] = None
    dropout: Annotated[float | None, Field(ge=0.0, lt=1.0, title="Dropout")] = 0.1
    target_modules: Annotated[list[str] | None, Field(min_length=1, title="Target Modules")] = None


class Me(BaseModel):
    tenant_id: Annotated[str, Field(title="Tenant Id")]
    tenant_name: Annotated[str, Field(title="Tenant Name")]
    key_id: Annotated[str, Field(title="Key Id")]
    role: Annotated[str, Field(title="Role")]


class MessageRead(BaseModel):
    role: Annotated[str, Field(title="Role")]
    content: Annotated[str, Field(title="Content")]


class ModelCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(max_length=200, min_length=1, title="Name")]
    source: Annotated[
        str,
        Field(
            description="'builtin:<name>', a local path (starts with '/', '.' or '~': a directory with config.json, a .gguf file, or a directory holding exactly one .gguf; a GGUF is converted to safetensors once, on a worker's first use), or a hub id 'org/name'",
            max_length=1024,
            min_length=1,
            title="Source",
        ),
    ]


class ModelRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    name: Annotated[str, Field(title="Name")]
    source: Annotated[str, Field(title="Source")]
    created_at: Annotated[datetime, Field(title="Created At")]


class MultipleChoiceMetric(BaseModel):
    """
    Accuracy: the answer is the choice whose log-likelihood as the response is highest.
    Every target record carries ``metadata.choices`` (at least two distinct strings) and
    ``metadata.answer`` (a 0-based index into them, or the correct choice's text).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["multiple_choice"], Field(title="Kind")]
    length_normalized: Annotated[
        bool | None,
        Field(
            description="compare mean per-token log-likelihoods instead of sums",
            title="Length Normalized",
        ),
    ] = False


class NiceSpec(BaseModel):
    """
    NICE's Monte-Carlo policy gradient (seed 002 §3; defaults from app. C.1).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    samples: Annotated[
        int | None,
        Field(
            description="M responses per probe and checkpoint",
            ge=1,
            le=1024,
            title="Samples",
        ),
    ] = 20
    temperature: Annotated[float | None, Field(gt=0.0, le=10.0, title="Temperature")] = 1.2
    top_k: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Top K")] = 50
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0, title="Top P")] = 0.95
    max_new_tokens: Annotated[int | None, Field(ge=1, le=8192, title="Max New Tokens")] = 128
    seed: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Seed")] = 0
    weighting: Annotated[
        Literal["reinforce", "baseline", "rejection"] | None,
        Field(
            description="sample weights: r/M, (r - mean r)/M (baseline), or r over the samples with r > 0 (rejection)",
            title="Weighting",
        ),
    ] = "reinforce"
    generation_batch_size: Annotated[
        int | None,
        Field(
            description="probe prompts per batch",
            ge=1,
            le=1024,
            title="Generation Batch Size",
        ),
    ] = 8
    assist_endpoint: Annotated[
        AssistEndpoint | None,
        Field(
            description="NICE-AMC: fetch the stronger model's responses from this endpoint (instead of an assist dataset); fetched once per valuation, reused at every checkpoint"
        ),
    ] = None


class NumericReward(BaseModel):
    """
    1 if the last number in the response is within tolerance of the numeric label.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["numeric"], Field(title="Kind")]
    abs_tol: Annotated[float | None, Field(ge=0.0, title="Abs Tol")] = 1e-06
    rel_tol: Annotated[float | None, Field(ge=0.0, title="Rel Tol")] = 0.0


class PageDeliveryRead(BaseModel):
    items: Annotated[list[DeliveryRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageExampleRead(BaseModel):
    items: Annotated[list[ExampleRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageModelRead(BaseModel):
    items: Annotated[list[ModelRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PredictionRead(BaseModel):
    result: Annotated[
        list[Any],
        Field(description="no regions: the prediction is its score", title="Result"),
    ]
    score: Annotated[
        float,
        Field(description="the valuation's score of the task's record", title="Score"),
    ]
    model_version: Annotated[str, Field(title="Model Version")]


class ProbeQuery(BaseModel):
    pair: Annotated[str | None, Field(title="Pair")]
    query: Annotated[
        str,
        Field(
            description="the probe's prompt; the user writes its response",
            title="Query",
        ),
    ]


class ProbeSetRef(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str,
        Field(
            description="shown in the legend, e.g. 'non-CoT' or 'CoT'",
            max_length=100,
            min_length=1,
            pattern="^[A-Za-z0-9][A-Za-z0-9 ._()+-]*$",
            title="Name",
        ),
    ]
    dataset_id: Annotated[
        str,
        Field(
            description="the probe set Z'_k: records carrying the pair key",
            title="Dataset Id",
        ),
    ]


class ProgressRead(BaseModel):
    done: Annotated[int, Field(title="Done")]
    total: Annotated[int, Field(title="Total")]


class ProjectionSpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    dim: Annotated[
        int | None,
        Field(description="projected feature dimension d", ge=1, le=1048576, title="Dim"),
    ] = 8192
    seed: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Seed")] = 0


class PythonTestsReward(BaseModel):
    """
    HumanEval-style: the program (prompt + response, or the response alone) is run with the
    probe's test code (``metadata.test``) and ``check(<metadata.entry_point>)`` in a sandbox:
    reward 1 if it passes, 0 if it fails, errors, or breaks a limit. Needs no label.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["python_tests"], Field(title="Kind")]
    program: Annotated[Literal["prompt+response", "response"] | None, Field(title="Program")] = (
        "prompt+response"
    )
    timeout_s: Annotated[
        float | None,
        Field(description="wall-clock limit", gt=0.0, le=300.0, title="Timeout S"),
    ] = 10.0
    cpu_time_s: Annotated[int | None, Field(ge=1, le=300, title="Cpu Time S")] = 10
    memory_mb: Annotated[
        int | None,
        Field(description="address-space limit", ge=64, le=65536, title="Memory Mb"),
    ] = 1024
    max_processes: Annotated[
        int | None,
        Field(
            description="processes the candidate may own",
            ge=1,
            le=256,
            title="Max Processes",
        ),
    ] = 8
    max_file_mb: Annotated[
        int | None,
        Field(description="largest file it may write", ge=1, le=4096, title="Max File Mb"),
    ] = 16


class Quantiles(BaseModel):
    p01: Annotated[float | None, Field(title="P01")]
    p05: Annotated[float | None, Field(title="P05")]
    p25: Annotated[float | None, Field(title="P25")]
    p50: Annotated[float | None, Field(title="P50")]
    p75: Annotated[float | None, Field(title="P75")]
    p95: Annotated[float | None, Field(title="P95")]
    p99: Annotated[float | None, Field(title="P99")]


class Quota(BaseModel):
    """
    At most ``max_per_group`` records per group (a subtask, or a metadata field's value).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    by: Annotated[
        str | None,
        Field(
            description="'subtask' or 'metadata.<field>'",
            pattern="^(subtask|metadata\\.[A-Za-z0-9_.-]+)$",
            title="By",
        ),
    ] = "subtask"
    max_per_group: Annotated[int, Field(ge=1, le=9007199254740991, title="Max Per Group")]


class Seed(RootModel[int]):
    root: Annotated[int, Field(ge=0, le=9007199254740991)]


class RandomArm(BaseModel):
    """
    ``budget`` records drawn uniformly from the pool, once per seed (the spread over seeds
    is reported).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["random"], Field(title="Kind")]
    name: Annotated[
        str | None,
        Field(
            description="the arm's row label; default from its kind and source (unique per evaluation)",
            max_length=100,
            min_length=1,
            title="Name",
        ),
    ] = None
    seeds: Annotated[list[Seed] | None, Field(max_length=20, min_length=1, title="Seeds")] = None


class RandomPick(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["random"], Field(title="Method")]
    seed: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Seed")] = 0


class Readiness(BaseModel):
    status: Annotated[str, Field(title="Status")]
    checks: Annotated[dict[str, str], Field(title="Checks")]
    failing: Annotated[list[str], Field(title="Failing")]


class RecordRead(BaseModel):
    record_id: Annotated[str, Field(title="Record Id")]
    position: Annotated[int, Field(title="Position")]
    subtask: Annotated[str | None, Field(title="Subtask")]
    messages: Annotated[list[MessageRead], Field(title="Messages")]
    metadata: Annotated[dict[str, Any], Field(title="Metadata")]


class RecordValues(BaseModel):
    record_id: Annotated[str, Field(title="Record Id")]
    values: Annotated[
        dict[str, float | None],
        Field(description="per column; null where undefined", title="Values"),
    ]


class ReferenceExample(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    query: Annotated[str, Field(max_length=100000, min_length=1, title="Query")]
    response: Annotated[
        str | None,
        Field(
            description="needed by the 'evaluate' strategy",
            max_length=100000,
            title="Response",
        ),
    ] = None
    pair: Annotated[
        str | None,
        Field(
            description="carried through to the probe query (the pair key)",
            max_length=200,
            title="Pair",
        ),
    ] = None


class RegexReward(BaseModel):
    """
    1 if ``pattern`` matches the response and its first group (or the whole match) equals
    the label; the pattern extracts the answer, e.g. ``answer is (\\-?\\d+)``.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["regex"], Field(title="Kind")]
    pattern: Annotated[str, Field(max_length=2000, min_length=1, title="Pattern")]
    ignore_case: Annotated[bool | None, Field(title="Ignore Case")] = False


class RewardMetric(BaseModel):
    """
    The reward of each target prompt's greedy response under a reward spec. Label kinds
    compare with the record's ``metadata.label`` when it is a non-empty string, else with the
    record's response (GSM8K-style: a ``numeric`` reward reads the last number of each);
    ``python_tests`` runs the record's ``metadata.test`` and ``metadata.entry_point``.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["reward"], Field(title="Kind")]
    reward_spec_id: Annotated[str, Field(title="Reward Spec Id")]


class RewardModelReward(BaseModel):
    """
    Score of a Hugging Face sequence-classification model (local path) on prompt+response:
    the logit of ``label_index``, or the single logit of a one-output head. Needs no label.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["reward_model"], Field(title="Kind")]
    model_path: Annotated[str, Field(max_length=1024, min_length=1, title="Model Path")]
    label_index: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Label Index")] = 0
    batch_size: Annotated[int | None, Field(ge=1, le=1024, title="Batch Size")] = 16


class RewardSpecCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(max_length=200, min_length=1, title="Name")]
    spec: Annotated[
        ExactMatchReward
        | ContainsReward
        | RegexReward
        | NumericReward
        | PythonTestsReward
        | RewardModelReward
        | HttpJudgeReward,
        Field(discriminator="kind", title="Spec"),
    ]


class RewardSpecRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    name: Annotated[str, Field(title="Name")]
    kind: Annotated[str, Field(title="Kind")]
    needs_label: Annotated[
        bool,
        Field(
            description="whether probes scored by it must carry a label (a response); python_tests, reward_model and http_judge accept prompt-only probes",
            title="Needs Label",
        ),
    ]
    spec: Annotated[dict[str, Any], Field(title="Spec")]
    created_at: Annotated[datetime, Field(title="Created At")]


class SampleRead(BaseModel):
    epoch: Annotated[
        int,
        Field(
            description="warmup checkpoint (1-based) the response was sampled from",
            title="Epoch",
        ),
    ]
    probe_record_id: Annotated[str, Field(title="Probe Record Id")]
    sample_index: Annotated[int, Field(title="Sample Index")]
    text: Annotated[
        str,
        Field(description="the sampled response, special tokens removed", title="Text"),
    ]
    n_tokens: Annotated[int, Field(title="N Tokens")]
    finished: Annotated[
        bool,
        Field(description="ended with EOS (not cut at max_new_tokens)", title="Finished"),
    ]
    reward: Annotated[float, Field(title="Reward")]


class ScoreFilter(BaseModel):
    """
    Keep records whose value lies strictly between thresholds (eq. 4) and whose percentile
    among the dataset's values, 100·F̂(f(x)), lies within [min_percentile, max_percentile]
    (eq. 5). A record with no value in the column is dropped.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    score_set_id: Annotated[str, Field(title="Score Set Id")]
    column: Annotated[str, Field(max_length=200, min_length=1, title="Column")]
    min: Annotated[float | None, Field(description="τ_min (exclusive)", title="Min")] = None
    max: Annotated[float | None, Field(description="τ_max (exclusive)", title="Max")] = None
    min_percentile: Annotated[float | None, Field(ge=0.0, le=100.0, title="Min Percentile")] = None
    max_percentile: Annotated[float | None, Field(ge=0.0, le=100.0, title="Max Percentile")] = None


class ScoreRead(BaseModel):
    rank: Annotated[int, Field(description="0-based; 0 is the most valuable record", title="Rank")]
    record_id: Annotated[str, Field(title="Record Id")]
    score: Annotated[float, Field(title="Score")]
    per_subtask: Annotated[
        dict[str, float],
        Field(
            description="the score's mean over each probe subtask's probes; empty for the self-influence methods (no probes)",
            title="Per Subtask",
        ),
    ]


class ScoreRef(BaseModel):
    """
    One column of a succeeded score set over the curation's dataset.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    score_set_id: Annotated[str, Field(title="Score Set Id")]
    column: Annotated[str, Field(max_length=200, min_length=1, title="Column")]
    order: Annotated[
        Literal["desc", "asc"] | None,
        Field(
            description="desc: higher is better (e.g. importance); asc: lower (e.g. nll)",
            title="Order",
        ),
    ] = "desc"


class ScoreSetArm(BaseModel):
    """
    The top ``budget`` records of a succeeded score set's column over the pool (ties by
    record id; records without a value never chosen).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["score_set"], Field(title="Kind")]
    name: Annotated[
        str | None,
        Field(
            description="the arm's row label; default from its kind and source (unique per evaluation)",
            max_length=100,
            min_length=1,
            title="Name",
        ),
    ] = None
    score_set_id: Annotated[str, Field(title="Score Set Id")]
    column: Annotated[str | None, Field(max_length=200, min_length=1, title="Column")] = "score"
    order: Annotated[
        Literal["desc", "asc"] | None,
        Field(description="desc: the highest values first", title="Order"),
    ] = "desc"


class ScoreSetRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    job_id: Annotated[str, Field(title="Job Id")]
    name: Annotated[str | None, Field(title="Name")]
    scorer: Annotated[str, Field(title="Scorer")]
    dataset_id: Annotated[str, Field(title="Dataset Id")]
    model_id: Annotated[str | None, Field(title="Model Id")]
    probe_dataset_id: Annotated[str | None, Field(title="Probe Dataset Id")]
    reward_spec_id: Annotated[str | None, Field(title="Reward Spec Id")]
    settings: Annotated[dict[str, Any], Field(title="Settings")]
    status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Status",
        ),
    ]
    stage: Annotated[str | None, Field(title="Stage")]
    progress: ProgressRead
    cancel_requested: Annotated[bool, Field(title="Cancel Requested")]
    error: Annotated[str | None, Field(title="Error")]
    notes: Annotated[list[str], Field(title="Notes")]
    timings: Annotated[dict[str, float], Field(description="seconds per stage", title="Timings")]
    n_records: Annotated[int | None, Field(title="N Records")]
    columns: Annotated[
        list[str] | None,
        Field(
            description="once succeeded: the score columns, e.g. quality: nll, perplexity, ...; importance scorers: score and subtask:<name> per probe subtask",
            title="Columns",
        ),
    ]
    summary: Annotated[
        dict[str, Any] | None,
        Field(
            description="once succeeded: per column its count, missing, mean, std, min, max, quantiles and histogram",
            title="Summary",
        ),
    ]
    report: Annotated[
        DiversityReportRead | None,
        Field(
            description="scorer 'knn' once succeeded: the dataset-level diversity report of the same embeddings; null otherwise"
        ),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    started_at: Annotated[datetime | None, Field(title="Started At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class SecretCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(pattern="^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", title="Name")]
    value: Annotated[
        str,
        Field(
            description="write-only; printable ASCII (it travels in an HTTP header)",
            max_length=10000,
            min_length=1,
            pattern="^[\\x21-\\x7e]+$",
            title="Value",
        ),
    ]
    hosts: Annotated[
        list[str],
        Field(
            description="the only hosts it may be sent to (exact names, e.g. api.openai.com)",
            max_length=20,
            min_length=1,
            title="Hosts",
        ),
    ]


class SecretRead(BaseModel):
    """
    A secret's name and origin; its value is never returned.
    """

    name: Annotated[str, Field(title="Name")]
    source: Annotated[
        str,
        Field(
            description="stored (by the tenant) or worker_env (granted by an operator)",
            title="Source",
        ),
    ]
    hosts: Annotated[list[str], Field(description="where it may be sent", title="Hosts")]
    created_at: Annotated[datetime, Field(title="Created At")]


class SelectionArm(BaseModel):
    """
    The first ``budget`` records (rank order) of a selection of a valuation of the pool.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    kind: Annotated[Literal["selection"], Field(title="Kind")]
    name: Annotated[
        str | None,
        Field(
            description="the arm's row label; default from its kind and source (unique per evaluation)",
            max_length=100,
            min_length=1,
            title="Name",
        ),
    ] = None
    selection_id: Annotated[str, Field(title="Selection Id")]


class SelectionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    rule: Annotated[
        Literal["top_k", "top_fraction", "threshold"],
        Field(
            description="top_k: the k best ranks; top_fraction: the best ceil(f*N); threshold: every score >= value",
            title="Rule",
        ),
    ]
    value: Annotated[
        float,
        Field(
            description="k (an integer >= 1), a fraction in (0, 1], or a score threshold",
            title="Value",
        ),
    ]
    order: Annotated[
        Literal["desc", "asc"] | None,
        Field(
            description="desc: the highest scores (top_k / top_fraction take the best ranks, threshold every score >= value); asc: the lowest (the worst ranks, every score <= value), lowest first. Ties fall by record id either way, as the ranks do",
            title="Order",
        ),
    ] = "desc"


class SelectionRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    valuation_id: Annotated[str, Field(title="Valuation Id")]
    rule: Annotated[str, Field(title="Rule")]
    value: Annotated[float, Field(title="Value")]
    order: Annotated[Literal["desc", "asc"], Field(title="Order")]
    n_selected: Annotated[int, Field(title="N Selected")]
    record_ids: Annotated[
        list[str],
        Field(
            description="selected pool record ids in the order taken: best rank first (desc), worst rank first (asc)",
            title="Record Ids",
        ),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]


class SentenceTransformerEmbedding(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    sentence_transformer: Annotated[
        str,
        Field(
            description="local path of a sentence-transformers model",
            max_length=1024,
            min_length=1,
            title="Sentence Transformer",
        ),
    ]


class SetupBody(BaseModel):
    """
    What Label Studio sends to ``setup``; every field optional, others ignored.
    """

    project: Annotated[
        str | None,
        Field(description="`{id}.{created}`", max_length=200, title="Project"),
    ] = None
    schema_: Annotated[
        str | None,
        Field(
            alias="schema",
            description="the project's label config (not used)",
            max_length=1000000,
            title="Schema",
        ),
    ] = None
    hostname: Annotated[
        str | None, Field(description="not used", max_length=2000, title="Hostname")
    ] = None
    access_token: Annotated[
        str | None,
        Field(
            description="the project owner's Label Studio token: ignored, never stored",
            max_length=2000,
            title="Access Token",
        ),
    ] = None
    extra_params: Annotated[
        dict[str, Any] | None, Field(description="not used", title="Extra Params")
    ] = None


class SetupRead(BaseModel):
    model_version: Annotated[str, Field(title="Model Version")]


class SigningSecretCreated(BaseModel):
    exists: Annotated[bool, Field(title="Exists")]
    created_at: Annotated[datetime | None, Field(title="Created At")] = None
    rotated_at: Annotated[datetime | None, Field(title="Rotated At")] = None
    previous_valid_until: Annotated[
        datetime | None,
        Field(
            description="after a rotation, deliveries carry a second signature with the previous secret until then",
            title="Previous Valid Until",
        ),
    ] = None
    secret: Annotated[
        str,
        Field(
            description="whsec_<base64>: verifies the webhook-signature of deliveries to the callback_url of this tenant's jobs; shown only now",
            title="Secret",
        ),
    ]


class SigningSecretRead(BaseModel):
    """
    The tenant's callback signing secret, without its value.
    """

    exists: Annotated[bool, Field(title="Exists")]
    created_at: Annotated[datetime | None, Field(title="Created At")] = None
    rotated_at: Annotated[datetime | None, Field(title="Rotated At")] = None
    previous_valid_until: Annotated[
        datetime | None,
        Field(
            description="after a rotation, deliveries carry a second signature with the previous secret until then",
            title="Previous Valid Until",
        ),
    ] = None


class StudyRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    job_id: Annotated[str, Field(title="Job Id")]
    name: Annotated[str | None, Field(title="Name")]
    warmup_run_id: Annotated[str, Field(title="Warmup Run Id")]
    eval_dataset_id: Annotated[str, Field(title="Eval Dataset Id")]
    probe_sets: Annotated[list[ProbeSetRef], Field(title="Probe Sets")]
    pair_key: Annotated[str, Field(title="Pair Key")]
    reference: Annotated[str | None, Field(title="Reference")]
    settings: Annotated[dict[str, Any], Field(title="Settings")]
    status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Status",
        ),
    ]
    stage: Annotated[str | None, Field(title="Stage")]
    progress: ProgressRead
    cancel_requested: Annotated[bool, Field(title="Cancel Requested")]
    error: Annotated[str | None, Field(title="Error")]
    notes: Annotated[
        list[str],
        Field(description="e.g. which stored gradients were reused", title="Notes"),
    ]
    timings: Annotated[dict[str, float], Field(description="seconds per stage", title="Timings")]
    result: Annotated[
        dict[str, Any] | None,
        Field(
            description="once succeeded: steps, pair_ids, and per probe set and metric (s_in, s_cross) the points {step, value, std, low, high, per_pair} and a verdict; verdict_rule says how verdicts are decided",
            title="Result",
        ),
    ]
    plots: Annotated[
        dict[str, Any] | None,
        Field(
            description="once succeeded: API paths of the PNG and SVG figures",
            title="Plots",
        ),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    started_at: Annotated[datetime | None, Field(title="Started At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class StudySettings(BaseModel):
    """
    How a strategy study computes gradients and reports spread (seed 001 §3-4).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    projection: Annotated[
        ProjectionSpec | None,
        Field(
            description="random projection of the LoRA gradients before the inner products (RelInf(z, z) stays exactly 1)"
        ),
    ] = None
    max_length: Annotated[
        int | None,
        Field(
            description="tokens per example; longer is cut",
            ge=8,
            le=65536,
            title="Max Length",
        ),
    ] = 512
    batch_size: Annotated[
        int | None,
        Field(description="featurization batch size", ge=1, le=4096, title="Batch Size"),
    ] = 8
    dtype: Annotated[Literal["float32", "bfloat16", "float16"] | None, Field(title="Dtype")] = (
        "float32"
    )
    bootstrap: Annotated[
        int | None,
        Field(
            description="bootstrap resamples of the pairs",
            ge=1,
            le=100000,
            title="Bootstrap",
        ),
    ] = 1000
    confidence: Annotated[
        float | None,
        Field(
            description="level of the bootstrap interval",
            gt=0.0,
            lt=1.0,
            title="Confidence",
        ),
    ] = 0.95
    seed: Annotated[
        int | None,
        Field(description="seed of the bootstrap", ge=0, le=9007199254740991, title="Seed"),
    ] = 0


class TaskIn(BaseModel):
    """
    One Label Studio task; fields other than ``id`` and ``data`` are ignored.
    """

    id: Annotated[
        int,
        Field(
            description="the Label Studio task id",
            ge=0,
            le=9007199254740991,
            title="Id",
        ),
    ]
    data: Annotated[
        dict[str, Any],
        Field(
            description="the task's data; `sift_record_id` names the Sift record",
            title="Data",
        ),
    ]


class TopKOverlap(BaseModel):
    k: Annotated[
        int,
        Field(
            description="as requested, or n_common if fewer records are in common",
            title="K",
        ),
    ]
    overlap: Annotated[int, Field(description="records in both top-k lists", title="Overlap")]
    jaccard: Annotated[
        float | None,
        Field(description="overlap / union; null when k is 0", title="Jaccard"),
    ]


class TrainingSpec(BaseModel):
    """
    The fine-tuning every arm gets (the warmup trainer on the arm's whole training set).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    epochs: Annotated[int | None, Field(ge=1, le=100, title="Epochs")] = 2
    learning_rate: Annotated[float | None, Field(gt=0.0, le=1.0, title="Learning Rate")] = 2e-05
    warmup_ratio: Annotated[float | None, Field(ge=0.0, lt=1.0, title="Warmup Ratio")] = 0.03
    batch_size: Annotated[int | None, Field(ge=1, le=4096, title="Batch Size")] = 16
    weight_decay: Annotated[float | None, Field(ge=0.0, title="Weight Decay")] = 0.0
    seed: Annotated[
        int | None,
        Field(
            description="LoRA initialisation, batch order and dropout: the same for every arm",
            ge=0,
            le=9007199254740991,
            title="Seed",
        ),
    ] = 0


class ValuationDistributionRead(BaseModel):
    """
    A valuation's scores as a distribution: the same summary and histogram as a score
    set's column (``workers.engine.summaries.column_summary``, 20 equal-width bins).
    """

    count: Annotated[int, Field(description="records with a value", title="Count")]
    missing: Annotated[
        int,
        Field(description="records whose value is undefined (null)", title="Missing"),
    ]
    mean: Annotated[float | None, Field(title="Mean")]
    std: Annotated[float | None, Field(title="Std")]
    min: Annotated[float | None, Field(title="Min")]
    max: Annotated[float | None, Field(title="Max")]
    quantiles: Quantiles
    histogram: Histogram
    plot: Annotated[
        str | None,
        Field(description="API path of the histogram as a PNG", title="Plot"),
    ]
    valuation_id: Annotated[str, Field(title="Valuation Id")]
    method: Annotated[str, Field(title="Method")]


class ValuationRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    job_id: Annotated[str, Field(title="Job Id")]
    method: Annotated[str, Field(title="Method")]
    model_id: Annotated[str, Field(title="Model Id")]
    pool_dataset_id: Annotated[str, Field(title="Pool Dataset Id")]
    probe_dataset_id: Annotated[
        str | None,
        Field(description="null for the self-influence methods", title="Probe Dataset Id"),
    ]
    reward_spec_id: Annotated[str | None, Field(title="Reward Spec Id")]
    assist_dataset_id: Annotated[str | None, Field(title="Assist Dataset Id")]
    warmup_eval_dataset_id: Annotated[
        str | None,
        Field(
            description="the warmup's held-out set; its curve is on the warmup run",
            title="Warmup Eval Dataset Id",
        ),
    ]
    settings: Annotated[
        dict[str, Any],
        Field(
            description="as requested; once the worker starts, with model defaults resolved",
            title="Settings",
        ),
    ]
    status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Status",
        ),
    ]
    stage: Annotated[str | None, Field(title="Stage")]
    progress: ProgressRead
    cancel_requested: Annotated[bool, Field(title="Cancel Requested")]
    error: Annotated[str | None, Field(title="Error")]
    notes: Annotated[
        list[str],
        Field(
            description="e.g. which cached warmup runs or features were reused",
            title="Notes",
        ),
    ]
    timings: Annotated[dict[str, float], Field(description="seconds per stage", title="Timings")]
    skipped: Annotated[
        list[dict[str, Any]],
        Field(
            description="[{record_id, dataset, reason}]: records left out, no response token fit in max_length (dataset: pool | probes | warmup_eval)",
            title="Skipped",
        ),
    ]
    truncated: Annotated[
        list[dict[str, Any]],
        Field(
            description="[{record_id, dataset, response_tokens, response_tokens_kept}]: records valued on the first response_tokens_kept tokens of their response (max_length cut the rest); raise max_length or drop the template's system prompt to keep more",
            title="Truncated",
        ),
    ]
    n_scored: Annotated[int | None, Field(title="N Scored")]
    warmup_run_id: Annotated[str | None, Field(title="Warmup Run Id")]
    created_at: Annotated[datetime, Field(title="Created At")]
    started_at: Annotated[datetime | None, Field(title="Started At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class VersusReferenceRead(BaseModel):
    loss: Annotated[
        DifferenceRead,
        Field(description="negative: a lower target loss than the reference"),
    ]
    metric: Annotated[DifferenceRead | None, Field(description="positive: a better task metric")]


class WarmupSpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    fraction: Annotated[
        float | None,
        Field(
            description="seeded random fraction of the pool",
            gt=0.0,
            le=1.0,
            title="Fraction",
        ),
    ] = 0.05
    epochs: Annotated[int | None, Field(ge=1, le=100, title="Epochs")] = 4
    learning_rate: Annotated[float | None, Field(gt=0.0, le=1.0, title="Learning Rate")] = 2e-05
    warmup_ratio: Annotated[float | None, Field(ge=0.0, lt=1.0, title="Warmup Ratio")] = 0.03
    batch_size: Annotated[int | None, Field(ge=1, le=4096, title="Batch Size")] = 16
    weight_decay: Annotated[float | None, Field(ge=0.0, title="Weight Decay")] = 0.0
    seed: Annotated[int | None, Field(ge=0, le=9007199254740991, title="Seed")] = 0


class WebhookBody(BaseModel):
    action: Annotated[str | None, Field(max_length=200, title="Action")] = None


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    url: Annotated[
        str,
        Field(
            description="where events are POSTed; a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW; rules in workers.outbound)",
            max_length=2000,
            pattern="^https?://",
            title="Url",
        ),
    ]
    event_types: Annotated[
        list[Literal["job.started", "job.succeeded", "job.failed", "job.cancelled"]],
        Field(max_length=4, min_length=1, title="Event Types"),
    ]
    description: Annotated[str | None, Field(max_length=200, title="Description")] = None


class WebhookCreated(BaseModel):
    id: Annotated[str, Field(title="Id")]
    url: Annotated[str, Field(title="Url")]
    event_types: Annotated[list[str], Field(title="Event Types")]
    description: Annotated[str | None, Field(title="Description")]
    created_at: Annotated[datetime, Field(title="Created At")]
    secret: Annotated[
        str,
        Field(
            description="whsec_<base64>: verify each delivery's webhook-signature with it (Standard Webhooks); shown only now",
            title="Secret",
        ),
    ]


class WebhookRead(BaseModel):
    """
    A registered endpoint; its secret is never shown again after creation.
    """

    id: Annotated[str, Field(title="Id")]
    url: Annotated[str, Field(title="Url")]
    event_types: Annotated[list[str], Field(title="Event Types")]
    description: Annotated[str | None, Field(title="Description")]
    created_at: Annotated[datetime, Field(title="Created At")]


class ServiceEvaluationsSchemasCurveRead(BaseModel):
    seed: Annotated[
        int | None,
        Field(description="the random arm's seed; null for other arms", title="Seed"),
    ]
    steps: Annotated[list[int], Field(title="Steps")]
    loss: Annotated[
        list[float],
        Field(description="the batch's mean response NLL at each step", title="Loss"),
    ]
    learning_rate: Annotated[list[float], Field(title="Learning Rate")]
    epoch_steps: Annotated[
        list[int], Field(description="the step ending each epoch", title="Epoch Steps")
    ]


class ServiceWarmupRunsSchemasCurveRead(BaseModel):
    """
    The training curve of a Sift-trained warmup: one entry per optimizer step in
    ``step``, ``loss`` and ``learning_rate``, the epochs' means, and the held-out loss per
    epoch of each held-out set a valuation on the run named (``warmup_eval_dataset_id``).
    """

    step: Annotated[list[int], Field(description="1-based optimizer steps", title="Step")]
    loss: Annotated[
        list[float],
        Field(
            description="the batch's mean NLL per response token at that step, before its update",
            title="Loss",
        ),
    ]
    learning_rate: Annotated[
        list[float],
        Field(
            description="the learning rate that step was taken with",
            title="Learning Rate",
        ),
    ]
    epochs: Annotated[
        list[EpochLossRead], Field(description="one per finished epoch", title="Epochs")
    ]
    heldout: Annotated[
        list[HeldoutRead] | None,
        Field(
            description="one per held-out set (content, max_length, system prompt) measured on the complete run; ask for one with POST /v1/valuations {'warmup_eval_dataset_id': ...}",
            title="Heldout",
        ),
    ] = None


class ArmResultRead(BaseModel):
    name: Annotated[str, Field(title="Name")]
    kind: Annotated[str, Field(title="Kind")]
    n_train: Annotated[
        int,
        Field(description="records trained on (after max_length skips)", title="N Train"),
    ]
    loss: Annotated[IntervalRead, Field(description="target response loss (nats per token)")]
    metric: Annotated[
        IntervalRead | None,
        Field(description="the task metric, when one was asked for"),
    ]
    vs_reference: Annotated[
        VersusReferenceRead | None,
        Field(
            description="paired difference from the reference arm; null for the reference itself or without one"
        ),
    ]
    curves: Annotated[list[ServiceEvaluationsSchemasCurveRead], Field(title="Curves")]


class BaseRead(BaseModel):
    loss: Annotated[IntervalRead, Field(description="the untrained model's target loss")]
    metric: IntervalRead | None


class ColumnSummary(BaseModel):
    count: Annotated[int, Field(description="records with a value", title="Count")]
    missing: Annotated[
        int,
        Field(description="records whose value is undefined (null)", title="Missing"),
    ]
    mean: Annotated[float | None, Field(title="Mean")]
    std: Annotated[float | None, Field(title="Std")]
    min: Annotated[float | None, Field(title="Min")]
    max: Annotated[float | None, Field(title="Max")]
    quantiles: Quantiles
    histogram: Histogram
    plot: Annotated[
        str | None,
        Field(description="API path of the histogram as a PNG", title="Plot"),
    ]


class CompareRead(BaseModel):
    a: CompareSide
    b: CompareSide
    n_common: Annotated[
        int,
        Field(
            description="records (by record_id) with a value in both columns",
            title="N Common",
        ),
    ]
    spearman: Annotated[
        float | None,
        Field(
            description="rank correlation of the two rankings (each side's order; average ranks for ties) over the common records: positive when they agree; null with fewer than 2 of them or when a column is constant there",
            title="Spearman",
        ),
    ]
    top_k: TopKOverlap


class CurationRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    job_id: Annotated[str, Field(title="Job Id")]
    name: Annotated[str | None, Field(title="Name")]
    dataset_id: Annotated[str, Field(title="Dataset Id")]
    model_id: Annotated[str | None, Field(title="Model Id")]
    recipe: Annotated[
        dict[str, Any],
        Field(description="filters, pick, budget, quota and settings", title="Recipe"),
    ]
    status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Status",
        ),
    ]
    stage: Annotated[str | None, Field(title="Stage")]
    progress: ProgressRead
    cancel_requested: Annotated[bool, Field(title="Cancel Requested")]
    error: Annotated[str | None, Field(title="Error")]
    notes: Annotated[list[str], Field(title="Notes")]
    timings: Annotated[dict[str, float], Field(title="Timings")]
    n_selected: Annotated[int | None, Field(title="N Selected")]
    record_ids: Annotated[
        list[str] | None,
        Field(description="once succeeded: the selection, pick order", title="Record Ids"),
    ]
    stats: Annotated[
        dict[str, Any] | None,
        Field(
            description="records left after each filter; selected records per quota group",
            title="Stats",
        ),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    started_at: Annotated[datetime | None, Field(title="Started At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class CurationSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    embedding: Annotated[
        Literal["lm", "tfidf"] | SentenceTransformerEmbedding | None,
        Field(
            description="the space of the diversity picks (as for score sets)",
            title="Embedding",
            validate_default=True,
        ),
    ] = "tfidf"
    max_length: Annotated[int | None, Field(ge=8, le=65536, title="Max Length")] = 512
    batch_size: Annotated[int | None, Field(ge=1, le=4096, title="Batch Size")] = 8
    dtype: Annotated[Literal["float32", "bfloat16", "float16"] | None, Field(title="Dtype")] = (
        "float32"
    )


class DatasetRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    name: Annotated[str, Field(title="Name")]
    n_records: Annotated[int, Field(title="N Records")]
    n_duplicates: Annotated[int, Field(title="N Duplicates")]
    n_prompt_only: Annotated[
        int,
        Field(
            description="records with a prompt but no response; only NICE probes with a reward that needs no label may have them",
            title="N Prompt Only",
        ),
    ]
    duplicates: Annotated[list[DuplicateRead], Field(title="Duplicates")]
    subtasks: Annotated[
        dict[str, int],
        Field(
            description="records per subtask (records without one omitted)",
            title="Subtasks",
        ),
    ]
    content_hash: Annotated[str, Field(title="Content Hash")]
    created_at: Annotated[datetime, Field(title="Created At")]


class DeitaPick(BaseModel):
    """
    DEITA (alg. 6): best score first, skipping records within cosine distance τ of a pick.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["deita"], Field(title="Method")]
    score: ScoreRef
    tau: Annotated[
        float | None,
        Field(description="DEITA's similarity 0.9 is τ = 0.1", gt=0.0, le=2.0, title="Tau"),
    ] = 0.1


class DistributionRead(BaseModel):
    count: Annotated[int, Field(description="records with a value", title="Count")]
    missing: Annotated[
        int,
        Field(description="records whose value is undefined (null)", title="Missing"),
    ]
    mean: Annotated[float | None, Field(title="Mean")]
    std: Annotated[float | None, Field(title="Std")]
    min: Annotated[float | None, Field(title="Min")]
    max: Annotated[float | None, Field(title="Max")]
    quantiles: Quantiles
    histogram: Histogram
    plot: Annotated[
        str | None,
        Field(description="API path of the histogram as a PNG", title="Plot"),
    ]
    score_set_id: Annotated[str, Field(title="Score Set Id")]
    column: Annotated[str, Field(title="Column")]


class EvaluationResultRead(BaseModel):
    n_target: Annotated[int, Field(description="target examples scored", title="N Target")]
    metric: Annotated[
        str | None,
        Field(
            description="e.g. 'numeric reward' or 'multiple_choice accuracy'",
            title="Metric",
        ),
    ]
    confidence: Annotated[float, Field(title="Confidence")]
    bootstrap: Annotated[int, Field(title="Bootstrap")]
    arms: Annotated[
        list[ArmResultRead],
        Field(description="the table, in request order", title="Arms"),
    ]
    reference: Annotated[
        str | None, Field(description="the reference arm's name", title="Reference")
    ]
    base: Annotated[BaseRead, Field(description="the model before any training, for scale")]
    provenance: Annotated[
        dict[str, Any],
        Field(
            description="model fingerprint, dataset content hashes, resolved settings and seeds",
            title="Provenance",
        ),
    ]
    notes: Annotated[
        list[str],
        Field(description="records skipped for max_length, and the like", title="Notes"),
    ]


class EvaluationSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    training: TrainingSpec | None = None
    lora: LoraSpec | None = None
    max_length: Annotated[
        int | None,
        Field(
            description="tokens per example; longer is cut",
            ge=8,
            le=65536,
            title="Max Length",
        ),
    ] = 512
    system_prompt: Annotated[
        str | None,
        Field(
            description="as a valuation's: the system prompt of records without one of their own (null keeps the chat template's default, a text sets it, \"\" drops the system turn); applied to the training sets, the target records, the greedy responses' prompts and the multiple-choice questions alike",
            max_length=20000,
            title="System Prompt",
        ),
    ] = None
    batch_size: Annotated[
        int | None,
        Field(
            description="target-set scoring batch size",
            ge=1,
            le=4096,
            title="Batch Size",
        ),
    ] = 8
    dtype: Annotated[Literal["float32", "bfloat16", "float16"] | None, Field(title="Dtype")] = (
        "float32"
    )
    max_new_tokens: Annotated[
        int | None,
        Field(
            description="reward metrics: length cap of the greedy response",
            ge=1,
            le=8192,
            title="Max New Tokens",
        ),
    ] = 128
    bootstrap: Annotated[
        int | None,
        Field(
            description="bootstrap resamples of the targets",
            ge=1,
            le=100000,
            title="Bootstrap",
        ),
    ] = 1000
    confidence: Annotated[
        float | None,
        Field(
            description="level of the bootstrap interval",
            gt=0.0,
            lt=1.0,
            title="Confidence",
        ),
    ] = 0.95
    bootstrap_seed: Annotated[int | None, Field(ge=0, le=4294967295, title="Bootstrap Seed")] = 0


class PageCurationRead(BaseModel):
    items: Annotated[list[CurationRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageDatasetRead(BaseModel):
    items: Annotated[list[DatasetRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageRecordRead(BaseModel):
    items: Annotated[list[RecordRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageRecordValues(BaseModel):
    items: Annotated[list[RecordValues], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageRewardSpecRead(BaseModel):
    items: Annotated[list[RewardSpecRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageSampleRead(BaseModel):
    items: Annotated[list[SampleRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageScoreRead(BaseModel):
    items: Annotated[list[ScoreRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageScoreSetRead(BaseModel):
    items: Annotated[list[ScoreSetRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageStudyRead(BaseModel):
    items: Annotated[list[StudyRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageValuationRead(BaseModel):
    items: Annotated[list[ValuationRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageWebhookRead(BaseModel):
    items: Annotated[list[WebhookRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PredictBody(BaseModel):
    tasks: Annotated[list[TaskIn], Field(max_length=50000, title="Tasks")]
    project: Annotated[str | None, Field(max_length=200, title="Project")] = None
    label_config: Annotated[str | None, Field(max_length=1000000, title="Label Config")] = None
    params: Annotated[dict[str, Any] | None, Field(title="Params")] = None


class PredictRead(BaseModel):
    results: Annotated[
        list[list[PredictionRead]],
        Field(
            description="per task, in order: one prediction, or none (no or unknown record id)",
            title="Results",
        ),
    ]
    model_version: Annotated[str, Field(title="Model Version")]


class ProbeQueriesCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    strategy: Annotated[
        Literal["cot", "clarify", "evaluate"],
        Field(
            description="seed 001 tab. 3: cot (CoT directive), clarify (query clarification), evaluate (response evaluation)",
            title="Strategy",
        ),
    ]
    examples: Annotated[
        list[ReferenceExample], Field(max_length=10000, min_length=1, title="Examples")
    ]


class ProbeQueriesRead(BaseModel):
    strategy: Annotated[Literal["cot", "clarify", "evaluate"], Field(title="Strategy")]
    queries: Annotated[list[ProbeQuery], Field(title="Queries")]


class QditPick(BaseModel):
    """
    QDIT (alg. 5): maximise (1 - α)·facility-location diversity + α·quality.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["qdit"], Field(title="Method")]
    quality: ScoreRef
    alpha: Annotated[
        float | None,
        Field(
            description="0: pure diversity; 1: pure quality",
            ge=0.0,
            le=1.0,
            title="Alpha",
        ),
    ] = 0.5


class RankPick(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    method: Annotated[Literal["rank"], Field(title="Method")]
    by: ScoreRef


class ScoreSetSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    max_length: Annotated[
        int | None,
        Field(
            description="tokens per example; longer is cut",
            ge=8,
            le=65536,
            title="Max Length",
        ),
    ] = 512
    batch_size: Annotated[int | None, Field(ge=1, le=4096, title="Batch Size")] = 8
    dtype: Annotated[Literal["float32", "bfloat16", "float16"] | None, Field(title="Dtype")] = (
        "float32"
    )
    ifd: Annotated[
        bool | None,
        Field(description="quality: also NLL of the response alone and IFD", title="Ifd"),
    ] = True
    embedding: Annotated[
        Literal["lm", "tfidf"] | SentenceTransformerEmbedding | None,
        Field(
            description="knn and rds: the model's mean last hidden state ('lm', needs model_id), TF-IDF of the text, or a local sentence-transformers model",
            title="Embedding",
            validate_default=True,
        ),
    ] = "tfidf"
    k: Annotated[
        int | None,
        Field(
            description="knn: the k of the k-th nearest neighbour",
            ge=1,
            le=1000,
            title="K",
        ),
    ] = 5
    n_clusters: Annotated[
        int | None,
        Field(
            description="knn: k-means clusters of the dataset-level report's inertia (at most the dataset's records); default min(8, records), written back on creation",
            ge=1,
            le=100000,
            title="N Clusters",
        ),
    ] = None
    seed: Annotated[
        int | None,
        Field(
            description="random: the seed of the scores; knn: of k-means",
            ge=0,
            le=4294967295,
            title="Seed",
        ),
    ] = 0
    dsir_buckets: Annotated[
        int | None,
        Field(
            description="dsir: hashed n-gram buckets",
            ge=2,
            le=16777216,
            title="Dsir Buckets",
        ),
    ] = 10000
    dsir_smoothing: Annotated[
        float | None,
        Field(description="dsir: pseudo-count", gt=0.0, le=100.0, title="Dsir Smoothing"),
    ] = 0.01
    bm25_k1: Annotated[float | None, Field(gt=0.0, le=100.0, title="Bm25 K1")] = 1.5
    bm25_b: Annotated[float | None, Field(ge=0.0, le=1.0, title="Bm25 B")] = 0.75


class StudyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str | None, Field(description="the plots' title", max_length=200, title="Name")
    ] = None
    warmup_run_id: Annotated[
        str,
        Field(
            description="the checkpoints θ_t: a warmup run Sift trained (a valuation's warmup_run_id) or one uploaded with POST /v1/warmup-runs",
            title="Warmup Run Id",
        ),
    ]
    eval_dataset_id: Annotated[
        str,
        Field(
            description="the evaluation set Z (records with responses)",
            title="Eval Dataset Id",
        ),
    ]
    probe_sets: Annotated[
        list[ProbeSetRef],
        Field(
            description="the probe sets Z'_k, one curve each",
            max_length=20,
            min_length=1,
            title="Probe Sets",
        ),
    ]
    pair_key: Annotated[
        str | None,
        Field(
            description="metadata field pairing z'_i with z_i: each value once per dataset, the same values in Z and every Z'_k",
            max_length=200,
            min_length=1,
            title="Pair Key",
        ),
    ] = "pair"
    reference: Annotated[
        str | None,
        Field(
            description="name of the probe set the others are compared with (the baseline)",
            title="Reference",
        ),
    ] = None
    callback_url: Annotated[
        str | None,
        Field(
            description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST /v1/webhook-secret, which must exist); a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
            max_length=2000,
            pattern="^https?://",
            title="Callback Url",
        ),
    ] = None
    settings: StudySettings | None = None


class ValuationSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    warmup: WarmupSpec | None = None
    lora: LoraSpec | None = None
    projection: ProjectionSpec | None = None
    max_length: Annotated[
        int | None,
        Field(
            description="tokens per example; longer is cut",
            ge=8,
            le=65536,
            title="Max Length",
        ),
    ] = 512
    system_prompt: Annotated[
        str | None,
        Field(
            description="the system prompt of records without one of their own: null keeps the chat template's default (SmolLM2's adds 21 tokens to every record), a text sets it, \"\" drops it (no system turn at all); NICE formats its probe prompts the same way",
            max_length=20000,
            title="System Prompt",
        ),
    ] = None
    batch_size: Annotated[
        int | None,
        Field(description="featurization batch size", ge=1, le=4096, title="Batch Size"),
    ] = 8
    shard_size: Annotated[
        int | None,
        Field(
            description="pool records per feature shard",
            ge=1,
            le=1048576,
            title="Shard Size",
        ),
    ] = 1024
    adam_bias_correction: Annotated[
        bool | None,
        Field(
            description="LESS's code uses raw moments (False); NICE app. F writes 1-beta^t",
            title="Adam Bias Correction",
        ),
    ] = False
    dtype: Annotated[Literal["float32", "bfloat16", "float16"] | None, Field(title="Dtype")] = (
        "float32"
    )
    nice: Annotated[NiceSpec | None, Field(description="used by methods 'nice' and 'nice_if'")] = (
        None
    )
    datainf: Annotated[
        DataInfSpec | None, Field(description="used by methods 'datainf' and 'nice_if'")
    ] = None


class WarmupRunRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    origin: Annotated[
        str,
        Field(description="warmup (trained by a valuation) | upload", title="Origin"),
    ]
    model_id: Annotated[str, Field(title="Model Id")]
    pool_dataset_id: Annotated[
        str | None,
        Field(description="the pool trained on; null for uploads", title="Pool Dataset Id"),
    ]
    status: Annotated[str, Field(description="running | complete", title="Status")]
    lora: LoraRead
    warmup: Annotated[
        dict[str, Any] | None,
        Field(
            description="the warmup settings of a Sift-trained run; null for uploads",
            title="Warmup",
        ),
    ]
    n_train: Annotated[int | None, Field(title="N Train")]
    created_at: Annotated[datetime, Field(title="Created At")]
    checkpoints: Annotated[list[CheckpointRead], Field(title="Checkpoints")]
    curve: Annotated[
        ServiceWarmupRunsSchemasCurveRead | None,
        Field(
            description="Sift-trained runs: the training loss per step and per epoch (so far, while running) and the held-out loss per epoch of each held-out set measured on it; plotted at plot.png / plot.svg once complete. Null for uploads (trained elsewhere) and for runs trained before curves were recorded"
        ),
    ]
    plots: Annotated[
        dict[str, Any] | None,
        Field(
            description="once complete with a curve: API paths of its figure (png, svg)",
            title="Plots",
        ),
    ]


class CurationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str | None, Field(max_length=200, title="Name")] = None
    dataset_id: Annotated[str, Field(description="the records to select from", title="Dataset Id")]
    filters: Annotated[
        list[ScoreFilter] | None,
        Field(description="all must pass (eqs. 4-5)", max_length=50, title="Filters"),
    ] = None
    pick: Annotated[
        RankPick | RandomPick | KCenterPick | HerdingPick | QditPick | DeitaPick,
        Field(
            description="rank (by a score), random, or a diversity pick in an embedding space: k_center (alg. 2), herding (alg. 3), qdit (alg. 5), deita (alg. 6)",
            discriminator="method",
            title="Pick",
        ),
    ]
    budget: Annotated[
        int | None,
        Field(description="records to select", ge=1, le=9007199254740991, title="Budget"),
    ] = None
    budget_fraction: Annotated[
        float | None,
        Field(
            description="or a fraction of the records left after the filters",
            gt=0.0,
            le=1.0,
            title="Budget Fraction",
        ),
    ] = None
    quota: Quota | None = None
    model_id: Annotated[
        str | None,
        Field(
            description="diversity picks with settings.embedding 'lm' embed with this model",
            title="Model Id",
        ),
    ] = None
    callback_url: Annotated[
        str | None,
        Field(
            description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST /v1/webhook-secret, which must exist); a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
            max_length=2000,
            pattern="^https?://",
            title="Callback Url",
        ),
    ] = None
    settings: CurationSettings | None = None


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str | None, Field(max_length=200, title="Name")] = None
    model_id: Annotated[
        str,
        Field(
            description="the base model every arm fine-tunes (fresh LoRA each)",
            title="Model Id",
        ),
    ]
    pool_dataset_id: Annotated[
        str,
        Field(
            description="the pool every arm's training set comes from",
            title="Pool Dataset Id",
        ),
    ]
    target_dataset_id: Annotated[
        str,
        Field(
            description="the held-out target set every arm is scored on (every record needs a response: its loss is the response loss)",
            title="Target Dataset Id",
        ),
    ]
    budget: Annotated[
        int,
        Field(
            description="k, the records of every arm but 'full': selections and curations give their first k, score sets their top k, random arms k uniform draws per seed",
            ge=1,
            le=9007199254740991,
            title="Budget",
        ),
    ]
    arms: Annotated[
        list[
            Annotated[
                SelectionArm | CurationArm | ScoreSetArm | RandomArm | FullArm,
                Field(discriminator="kind"),
            ]
        ],
        Field(
            description="the training sets compared",
            max_length=20,
            min_length=1,
            title="Arms",
        ),
    ]
    reference_arm: Annotated[
        str | None,
        Field(
            description="the arm (by name) every other arm is compared with, by the paired bootstrap of the per-example differences; default: the first random arm, if any",
            max_length=100,
            min_length=1,
            title="Reference Arm",
        ),
    ] = None
    metric: Annotated[
        RewardMetric | MultipleChoiceMetric | None,
        Field(
            description="a task metric besides the response loss: a reward of each greedy response (reward spec), or multiple-choice accuracy by log-likelihood",
            title="Metric",
        ),
    ] = None
    callback_url: Annotated[
        str | None,
        Field(
            description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST /v1/webhook-secret, which must exist); a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
            max_length=2000,
            pattern="^https?://",
            title="Callback Url",
        ),
    ] = None
    settings: EvaluationSettings | None = None


class EvaluationRead(BaseModel):
    id: Annotated[str, Field(title="Id")]
    job_id: Annotated[str, Field(title="Job Id")]
    name: Annotated[str | None, Field(title="Name")]
    model_id: Annotated[str, Field(title="Model Id")]
    pool_dataset_id: Annotated[str, Field(title="Pool Dataset Id")]
    target_dataset_id: Annotated[str, Field(title="Target Dataset Id")]
    reward_spec_id: Annotated[str | None, Field(title="Reward Spec Id")]
    budget: Annotated[int, Field(title="Budget")]
    arms: Annotated[list[ArmRead], Field(title="Arms")]
    metric: Annotated[dict[str, Any] | None, Field(title="Metric")]
    settings: Annotated[dict[str, Any], Field(title="Settings")]
    status: Annotated[
        str,
        Field(
            description="queued | running | succeeded | failed | cancelled",
            title="Status",
        ),
    ]
    stage: Annotated[str | None, Field(title="Stage")]
    progress: ProgressRead
    cancel_requested: Annotated[bool, Field(title="Cancel Requested")]
    error: Annotated[str | None, Field(title="Error")]
    notes: Annotated[list[str], Field(title="Notes")]
    timings: Annotated[dict[str, float], Field(description="seconds per stage", title="Timings")]
    result: Annotated[EvaluationResultRead | None, Field(description="once succeeded: the table")]
    plots: Annotated[
        dict[str, Any] | None,
        Field(description="once succeeded: API paths of the figure", title="Plots"),
    ]
    created_at: Annotated[datetime, Field(title="Created At")]
    started_at: Annotated[datetime | None, Field(title="Started At")]
    finished_at: Annotated[datetime | None, Field(title="Finished At")]


class PageEvaluationRead(BaseModel):
    items: Annotated[list[EvaluationRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class PageWarmupRunRead(BaseModel):
    items: Annotated[list[WarmupRunRead], Field(title="Items")]
    total: Annotated[int, Field(title="Total")]
    limit: Annotated[int, Field(title="Limit")]
    offset: Annotated[int, Field(title="Offset")]


class ScoreSetCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str | None, Field(max_length=200, title="Name")] = None
    scorer: Annotated[
        Literal["quality", "text", "knn", "random", "bm25", "dsir", "rds", "reward"],
        Field(
            description="quality (model: nll, perplexity, el2n, uncertainty; IFD with settings.ifd) | text (lengths, TTR, MTLD, distinct-n) | knn (distance to the k-th nearest neighbour) | random | bm25 | dsir | rds (importance against probe_dataset_id) | reward (each response's reward under reward_spec_id)",
            title="Scorer",
        ),
    ]
    dataset_id: Annotated[str, Field(description="the records to score", title="Dataset Id")]
    model_id: Annotated[
        str | None,
        Field(
            description="needed by 'quality', and by 'knn' and 'rds' with settings.embedding 'lm'; refused otherwise",
            title="Model Id",
        ),
    ] = None
    probe_dataset_id: Annotated[
        str | None,
        Field(
            description="importance scorers (random, bm25, dsir, rds) only: the probes records are scored against (aggregated per probe subtask)",
            title="Probe Dataset Id",
        ),
    ] = None
    reward_spec_id: Annotated[
        str | None,
        Field(
            description="scorer 'reward' only: the reward spec each record's response is scored by (as a response to the record's prompt); the label kinds (exact_match, contains, regex, numeric) compare with the record's metadata.label, which every record must then have, python_tests runs the record's metadata.test and metadata.entry_point",
            title="Reward Spec Id",
        ),
    ] = None
    callback_url: Annotated[
        str | None,
        Field(
            description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST /v1/webhook-secret, which must exist); a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
            max_length=2000,
            pattern="^https?://",
            title="Callback Url",
        ),
    ] = None
    settings: ScoreSetSettings | None = None


class ValuationCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    model_id: Annotated[str, Field(title="Model Id")]
    pool_dataset_id: Annotated[
        str,
        Field(
            description="the records to value (training candidates)",
            title="Pool Dataset Id",
        ),
    ]
    probe_dataset_id: Annotated[
        str | None,
        Field(
            description="the target-task examples (validation set); required by every method but the self_influence methods, which take none",
            title="Probe Dataset Id",
        ),
    ] = None
    method: Annotated[
        Literal[
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
        | None,
        Field(
            description="less (LESS: Σ_e w_e cos(Adam pool feature, probe gradient)) | tracin (TracIn as published: Σ_e η̄_e <pool gradient, probe gradient>, plain SGD gradients on both sides) | tracin_adam (Σ_e η̄_e <Adam pool feature, probe gradient>: LESS's inner product, what 'tracin' computed before migration 0012) | nice (policy gradient of a reward on the probe side) | datainf | nice_if (influence functions at the last checkpoint, loss or policy gradient on the probe side) | self_influence (TracIn's self-influence Σ_e η̄_e ‖pool gradient‖², no probes: the highest ranks first are the likeliest mislabelled or harmful records) | self_influence_adam (Σ_e η̄_e ‖Adam pool feature‖²) | self_influence_token_weighted (each record's self_influence times its response tokens, as the warmup's token-mean loss weighs it: far better at finding swapped responses); they reuse the stored pool features of a tracin (SGD) or less / tracin_adam (Adam) valuation with the same model, pool and settings",
            title="Method",
        ),
    ] = "less"
    reward_spec_id: Annotated[
        str | None,
        Field(
            description="methods 'nice' and 'nice_if' only: the reward spec probe samples are scored with",
            title="Reward Spec Id",
        ),
    ] = None
    assist_dataset_id: Annotated[
        str | None,
        Field(
            description="methods 'nice' and 'nice_if' only (NICE-AMC): responses of a stronger model to use instead of sampling; each record's metadata.probe_id names the probe it answers",
            title="Assist Dataset Id",
        ),
    ] = None
    warmup_eval_dataset_id: Annotated[
        str | None,
        Field(
            description="a held-out set for the warmup (every record with a response): its mean response loss at every warmup checkpoint is stored on the warmup run's curve.heldout and plotted next to the training loss",
            title="Warmup Eval Dataset Id",
        ),
    ] = None
    callback_url: Annotated[
        str | None,
        Field(
            description="POSTed a signed job.succeeded / job.failed / job.cancelled event when the job finishes (Standard Webhooks; signed with the tenant's webhook secret, POST /v1/webhook-secret, which must exist); a public https URL unless the operator allowlists the host (SIFT_OUTBOUND_ALLOW); retried with backoff for about a day",
            max_length=2000,
            pattern="^https?://",
            title="Callback Url",
        ),
    ] = None
    settings: ValuationSettings | None = None
