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
                {"name": "smollm2", "source": "/models/SmolLM2-135M-Instruct.Q4_1.gguf"},
                {"name": "mistral", "source": "mistralai/Mistral-7B-v0.1"},
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    source: str = Field(
        min_length=1,
        max_length=1024,
        description="'builtin:<name>', a local path (starts with '/', '.' or '~': a directory "
        "with config.json, a .gguf file, or a directory holding exactly one .gguf; a GGUF is "
        "converted to safetensors once, on a worker's first use), or a hub id 'org/name'",
    )


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    source: str
    created_at: datetime
