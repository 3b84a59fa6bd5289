from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ModelCreate(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "tiny", "source": "builtin:tiny-llama"},
                {"name": "llama-7b-local", "source": "/models/llama-2-7b-hf"},
                {"name": "mistral", "source": "mistralai/Mistral-7B-v0.1"},
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    source: str = Field(
        min_length=1,
        max_length=1024,
        description="'builtin:<name>', a local directory with config.json (starts with '/', "
        "'.' or '~'), or a hub id 'org/name'",
    )


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    source: str
    created_at: datetime
