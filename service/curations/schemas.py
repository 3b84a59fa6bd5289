from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.valuations.schemas import ProgressRead
from service.webhooks.schemas import callback_url_field
from workers.contracts import JSON_INT_MAX, CurationSettings, Pick, Quota, ScoreFilter


class CurationCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "fluent, relevant, diverse",
                    "dataset_id": "0b6d5c4e3f2a41908f7e6d5c4b3a2918",
                    "filters": [
                        {"score_set_id": "5f0c…", "column": "ifd", "max": 1.0},
                        {"score_set_id": "5f0c…", "column": "nll", "max_percentile": 90},
                    ],
                    "pick": {
                        "method": "qdit",
                        "quality": {"score_set_id": "9a8b…", "column": "score"},
                        "alpha": 0.5,
                    },
                    "budget": 1000,
                    "quota": {"by": "subtask", "max_per_group": 300},
                }
            ]
        },
    )

    name: str | None = Field(None, max_length=200)
    dataset_id: str = Field(description="the records to select from")
    filters: list[ScoreFilter] = Field(
        default_factory=list, max_length=50, description="all must pass (eqs. 4-5)"
    )
    pick: Pick = Field(
        description="rank (by a score), random, or a diversity pick in an embedding space: "
        "k_center (alg. 2), herding (alg. 3), qdit (alg. 5), deita (alg. 6)"
    )
    budget: int | None = Field(None, ge=1, le=JSON_INT_MAX, description="records to select")
    budget_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="or a fraction of the records left after the filters"
    )
    quota: Quota | None = None
    model_id: str | None = Field(
        None, description="diversity picks with settings.embedding 'lm' embed with this model"
    )
    callback_url: str | None = callback_url_field()
    settings: CurationSettings = Field(default_factory=lambda: CurationSettings.model_validate({}))


class CurationRead(BaseModel):
    id: str
    job_id: str
    name: str | None
    dataset_id: str
    model_id: str | None
    recipe: dict[str, Any] = Field(description="filters, pick, budget, quota and settings")
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None
    progress: ProgressRead
    cancel_requested: bool
    error: str | None
    notes: list[str]
    timings: dict[str, float]
    n_selected: int | None
    record_ids: list[str] | None = Field(description="once succeeded: the selection, pick order")
    stats: dict[str, Any] | None = Field(
        description="records left after each filter; selected records per quota group"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
