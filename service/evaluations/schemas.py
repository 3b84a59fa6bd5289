from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.valuations.schemas import ProgressRead
from service.webhooks.schemas import callback_url_field
from workers.contracts import JSON_INT_MAX, Arm, EvaluationSettings, Metric


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "LESS top 5% vs random vs full",
                    "model_id": "5f0c6b7e9a3d4c2b8e1f0a9d7c6b5a41",
                    "pool_dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "target_dataset_id": "9a8b7c6d5e4f43218a9b8c7d6e5f4a3b",
                    "budget": 100,
                    "arms": [
                        {"kind": "selection", "selection_id": "3c2b1a0f9e8d47c6b5a4f3e2d1c0b9a8"},
                        {"kind": "random", "seeds": [0, 1, 2]},
                        {"kind": "full"},
                    ],
                    "metric": {
                        "kind": "reward",
                        "reward_spec_id": "7d6c5b4a39284f1e0d9c8b7a6f5e4d3c",
                    },
                    "settings": {"training": {"epochs": 2, "learning_rate": 2e-4}},
                }
            ]
        },
    )

    name: str | None = Field(None, max_length=200)
    model_id: str = Field(description="the base model every arm fine-tunes (fresh LoRA each)")
    pool_dataset_id: str = Field(description="the pool every arm's training set comes from")
    target_dataset_id: str = Field(
        description="the held-out target set every arm is scored on (every record needs a "
        "response: its loss is the response loss)"
    )
    budget: int = Field(
        ge=1,
        le=JSON_INT_MAX,
        description="k, the records of every arm but 'full': selections and curations give "
        "their first k, score sets their top k, random arms k uniform draws per seed",
    )
    arms: list[Arm] = Field(min_length=1, max_length=20, description="the training sets compared")
    reference_arm: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="the arm (by name) every other arm is compared with, by the paired "
        "bootstrap of the per-example differences; default: the first random arm, if any",
    )
    metric: Metric | None = Field(
        None,
        description="a task metric besides the response loss: a reward of each greedy response "
        "(reward spec), or multiple-choice accuracy by log-likelihood",
    )
    callback_url: str | None = callback_url_field()
    settings: EvaluationSettings = Field(
        default_factory=lambda: EvaluationSettings.model_validate({})
    )


class ArmRead(BaseModel):
    kind: str
    name: str
    n_records: int | None = Field(description="training records; null for 'full' until run")
    selection_id: str | None = None
    curation_id: str | None = None
    score_set_id: str | None = None
    column: str | None = None
    order: str | None = None
    seeds: list[int] | None = None
    reference: bool = Field(False, description="the arm the others are compared with")


class IntervalRead(BaseModel):
    mean: float = Field(description="the mean over the target set (and over seeds)")
    low: float = Field(description="bootstrap interval over target examples, lower end")
    high: float
    per_seed: list[float] = Field(description="each run's mean (one run unless random)")
    seed_std: float | None = Field(description="std over seeds (ddof 1); null for one run")


class DifferenceRead(BaseModel):
    mean: float = Field(description="mean over target examples of this arm minus the reference")
    low: float = Field(description="paired bootstrap interval, lower end")
    high: float


class VersusReferenceRead(BaseModel):
    loss: DifferenceRead = Field(description="negative: a lower target loss than the reference")
    metric: DifferenceRead | None = Field(description="positive: a better task metric")


class BaseRead(BaseModel):
    loss: IntervalRead = Field(description="the untrained model's target loss")
    metric: IntervalRead | None


class CurveRead(BaseModel):
    seed: int | None = Field(description="the random arm's seed; null for other arms")
    steps: list[int]
    loss: list[float] = Field(description="the batch's mean response NLL at each step")
    learning_rate: list[float]
    epoch_steps: list[int] = Field(description="the step ending each epoch")


class ArmResultRead(BaseModel):
    name: str
    kind: str
    n_train: int = Field(description="records trained on (after max_length skips)")
    loss: IntervalRead = Field(description="target response loss (nats per token)")
    metric: IntervalRead | None = Field(description="the task metric, when one was asked for")
    vs_reference: VersusReferenceRead | None = Field(
        description="paired difference from the reference arm; null for the reference itself "
        "or without one"
    )
    curves: list[CurveRead]


class EvaluationResultRead(BaseModel):
    n_target: int = Field(description="target examples scored")
    metric: str | None = Field(description="e.g. 'numeric reward' or 'multiple_choice accuracy'")
    confidence: float
    bootstrap: int
    arms: list[ArmResultRead] = Field(description="the table, in request order")
    reference: str | None = Field(description="the reference arm's name")
    base: BaseRead = Field(description="the model before any training, for scale")
    provenance: dict[str, Any] = Field(
        description="model fingerprint, dataset content hashes, resolved settings and seeds"
    )
    notes: list[str] = Field(description="records skipped for max_length, and the like")


class ExampleRead(BaseModel):
    record_id: str = Field(description="a target record")
    loss: dict[str, float] = Field(
        description="per arm (by name) its response loss on this record, the mean over seeds"
    )
    metric: dict[str, float] | None = Field(description="per arm its metric; null without one")
    base_loss: float = Field(description="the untrained model's loss")
    base_metric: float | None


class EvaluationRead(BaseModel):
    id: str
    job_id: str
    name: str | None
    model_id: str
    pool_dataset_id: str
    target_dataset_id: str
    reward_spec_id: str | None
    budget: int
    arms: list[ArmRead]
    metric: dict[str, Any] | None
    settings: dict[str, Any]
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None
    progress: ProgressRead
    cancel_requested: bool
    error: str | None
    notes: list[str]
    timings: dict[str, float] = Field(description="seconds per stage")
    result: EvaluationResultRead | None = Field(description="once succeeded: the table")
    plots: dict[str, str] | None = Field(description="once succeeded: API paths of the figure")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
