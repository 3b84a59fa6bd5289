from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Rule = Literal["top_k", "top_fraction", "threshold"]
Order = Literal["desc", "asc"]
ExportFormat = Literal["jsonl"]
"""The export formats of selections and curations (an enum in the OpenAPI document)."""


class SelectionCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"rule": "top_fraction", "value": 0.05},
                {"rule": "top_k", "value": 1000},
                {"rule": "threshold", "value": 0.0},
                {"rule": "top_k", "value": 50, "order": "asc"},
            ]
        },
    )

    rule: Rule = Field(
        description="top_k: the k best ranks; top_fraction: the best ceil(f*N); threshold: "
        "every score >= value"
    )
    value: float = Field(
        allow_inf_nan=False,
        description="k (an integer >= 1), a fraction in (0, 1], or a score threshold",
    )
    order: Order = Field(
        "desc",
        description="desc: the highest scores (top_k / top_fraction take the best ranks, "
        "threshold every score >= value); asc: the lowest (the worst ranks, every score <= "
        "value), lowest first. Ties fall by record id either way, as the ranks do",
    )


class SelectionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    valuation_id: str
    rule: str
    value: float
    order: Order
    n_selected: int
    record_ids: list[str] = Field(
        description="selected pool record ids in the order taken: best rank first (desc), "
        "worst rank first (asc)"
    )
    created_at: datetime
