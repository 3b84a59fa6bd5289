from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.webhooks.schemas import callback_url_field
from workers.contracts import Method, ValuationSettings


class ValuationCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_id": "5f0c6b7e9a3d4c2b8e1f0a9d7c6b5a41",
                    "pool_dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "probe_dataset_id": "9a8b7c6d5e4f43218a9b8c7d6e5f4a3b",
                    "method": "less",
                    "settings": {
                        "warmup": {"fraction": 0.05, "epochs": 4},
                        "projection": {"dim": 8192},
                    },
                }
            ]
        },
    )

    model_id: str
    pool_dataset_id: str = Field(description="the records to value (training candidates)")
    probe_dataset_id: str | None = Field(
        None,
        description="the target-task examples (validation set); required by every method but "
        "the self_influence methods, which take none",
    )
    method: Method = Field(
        "less",
        description="less (LESS: Σ_e w_e cos(Adam pool feature, probe gradient)) | tracin "
        "(TracIn as published: Σ_e η̄_e <pool gradient, probe gradient>, plain SGD gradients on "
        "both sides) | tracin_adam (Σ_e η̄_e <Adam pool feature, probe gradient>: LESS's inner "
        "product, what 'tracin' computed before migration 0012) | nice (policy gradient of a "
        "reward on the probe side) | datainf | nice_if (influence functions at the last "
        "checkpoint, loss or policy gradient on the probe side) | self_influence (TracIn's "
        "self-influence Σ_e η̄_e ‖pool gradient‖², no probes: the highest ranks first are the "
        "likeliest mislabelled or harmful records) | self_influence_adam (Σ_e η̄_e ‖Adam pool "
        "feature‖²) | self_influence_token_weighted (each record's self_influence times its "
        "response tokens, as the warmup's token-mean loss weighs it: far better at finding "
        "swapped responses); they reuse the stored pool features of a tracin (SGD) or less / "
        "tracin_adam (Adam) valuation with the same model, pool and settings",
    )
    reward_spec_id: str | None = Field(
        None,
        description="methods 'nice' and 'nice_if' only: the reward spec probe samples are "
        "scored with",
    )
    assist_dataset_id: str | None = Field(
        None,
        description="methods 'nice' and 'nice_if' only (NICE-AMC): responses of a stronger "
        "model to use instead of sampling; each record's metadata.probe_id names the probe it "
        "answers",
    )
    warmup_eval_dataset_id: str | None = Field(
        None,
        description="a held-out set for the warmup (every record with a response): its mean "
        "response loss at every warmup checkpoint is stored on the warmup run's "
        "curve.heldout and plotted next to the training loss",
    )
    callback_url: str | None = callback_url_field()
    settings: ValuationSettings = Field(
        default_factory=lambda: ValuationSettings.model_validate({})
    )


class ProgressRead(BaseModel):
    done: int
    total: int


class ValuationRead(BaseModel):
    id: str
    job_id: str
    method: str
    model_id: str
    pool_dataset_id: str
    probe_dataset_id: str | None = Field(description="null for the self-influence methods")
    reward_spec_id: str | None
    assist_dataset_id: str | None
    warmup_eval_dataset_id: str | None = Field(
        description="the warmup's held-out set; its curve is on the warmup run"
    )
    settings: dict[str, Any] = Field(
        description="as requested; once the worker starts, with model defaults resolved"
    )
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None
    progress: ProgressRead
    cancel_requested: bool
    error: str | None
    notes: list[str] = Field(description="e.g. which cached warmup runs or features were reused")
    timings: dict[str, float] = Field(description="seconds per stage")
    skipped: list[dict[str, Any]] = Field(
        description="[{record_id, dataset, reason}]: records left out, no response token fit "
        "in max_length (dataset: pool | probes | warmup_eval)"
    )
    truncated: list[dict[str, Any]] = Field(
        description="[{record_id, dataset, response_tokens, response_tokens_kept}]: records "
        "valued on the first response_tokens_kept tokens of their response (max_length cut "
        "the rest); raise max_length or drop the template's system prompt to keep more"
    )
    n_scored: int | None
    warmup_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SampleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int = Field(description="warmup checkpoint (1-based) the response was sampled from")
    probe_record_id: str
    sample_index: int
    text: str = Field(description="the sampled response, special tokens removed")
    n_tokens: int
    finished: bool = Field(description="ended with EOS (not cut at max_new_tokens)")
    reward: float


class ScoreRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rank: int = Field(description="0-based; 0 is the most valuable record")
    record_id: str
    score: float
    per_subtask: dict[str, float] = Field(
        description="the score's mean over each probe subtask's probes; empty for the "
        "self-influence methods (no probes)"
    )
