from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.contracts import RewardSpec


class RewardSpecCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "gsm8k-answer", "spec": {"kind": "numeric", "abs_tol": 1e-6}},
                {"name": "humaneval", "spec": {"kind": "python_tests", "timeout_s": 10}},
                {
                    "name": "boxed",
                    "spec": {"kind": "regex", "pattern": "\\\\boxed\\{([^}]*)\\}"},
                },
                {
                    "name": "judge",
                    "spec": {"kind": "http_judge", "url": "https://judge.example.com/score"},
                },
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    spec: RewardSpec


class RewardSpecRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    needs_label: bool = Field(
        description="whether probes scored by it must carry a label (a response); "
        "python_tests, reward_model and http_judge accept prompt-only probes"
    )
    spec: dict[str, Any]
    created_at: datetime
