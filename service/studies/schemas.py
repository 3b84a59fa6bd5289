from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.valuations.schemas import ProgressRead
from service.webhooks.schemas import callback_url_field
from workers.contracts import StudySettings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]*$"


class ProbeSetRef(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=NAME_PATTERN,
        description="shown in the legend, e.g. 'non-CoT' or 'CoT'",
    )
    dataset_id: str = Field(description="the probe set Z'_k: records carrying the pair key")


class StudyCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "does chain-of-thought data help?",
                    "warmup_run_id": "3c1f0e9d8b7a46c5a4e3d2c1b0a9f8e7",
                    "eval_dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "probe_sets": [
                        {"name": "non-CoT", "dataset_id": "9a8b7c6d5e4f43218a9b8c7d6e5f4a3b"},
                        {"name": "CoT", "dataset_id": "1d2c3b4a5f6e47d88c9b0a1f2e3d4c5b"},
                    ],
                    "pair_key": "pair",
                    "reference": "non-CoT",
                }
            ]
        },
    )

    name: str | None = Field(None, max_length=200, description="the plots' title")
    warmup_run_id: str = Field(
        description="the checkpoints θ_t: a warmup run Sift trained (a valuation's "
        "warmup_run_id) or one uploaded with POST /v1/warmup-runs"
    )
    eval_dataset_id: str = Field(description="the evaluation set Z (records with responses)")
    probe_sets: list[ProbeSetRef] = Field(
        min_length=1, max_length=20, description="the probe sets Z'_k, one curve each"
    )
    pair_key: str = Field(
        "pair",
        min_length=1,
        max_length=200,
        description="metadata field pairing z'_i with z_i: each value once per dataset, the "
        "same values in Z and every Z'_k",
    )
    reference: str | None = Field(
        None, description="name of the probe set the others are compared with (the baseline)"
    )
    callback_url: str | None = callback_url_field()
    settings: StudySettings = Field(default_factory=lambda: StudySettings.model_validate({}))


class StudyRead(BaseModel):
    id: str
    job_id: str
    name: str | None
    warmup_run_id: str
    eval_dataset_id: str
    probe_sets: list[ProbeSetRef]
    pair_key: str
    reference: str | None
    settings: dict[str, Any]
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None
    progress: ProgressRead
    cancel_requested: bool
    error: str | None
    notes: list[str] = Field(description="e.g. which stored gradients were reused")
    timings: dict[str, float] = Field(description="seconds per stage")
    result: dict[str, Any] | None = Field(
        description="once succeeded: steps, pair_ids, and per probe set and metric (s_in, "
        "s_cross) the points {step, value, std, low, high, per_pair} and a verdict; "
        "verdict_rule says how verdicts are decided"
    )
    plots: dict[str, str] | None = Field(
        description="once succeeded: API paths of the PNG and SVG figures"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


Strategy = Literal["cot", "clarify", "evaluate"]


class ReferenceExample(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(min_length=1, max_length=100_000)
    response: str | None = Field(
        None, max_length=100_000, description="needed by the 'evaluate' strategy"
    )
    pair: str | None = Field(
        None, max_length=200, description="carried through to the probe query (the pair key)"
    )


class ProbeQueriesCreate(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    strategy: Strategy = Field(
        description="seed 001 tab. 3: cot (CoT directive), clarify (query clarification), "
        "evaluate (response evaluation)"
    )
    examples: list[ReferenceExample] = Field(min_length=1, max_length=10_000)


class ProbeQuery(BaseModel):
    pair: str | None
    query: str = Field(description="the probe's prompt; the user writes its response")


class ProbeQueriesRead(BaseModel):
    strategy: Strategy
    queries: list[ProbeQuery]
