from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

EXAMPLE_RECORDS: list[JsonValue] = [
    {
        "id": "ex-1",
        "prompt": "Name a prime number greater than 10.",
        "response": "11",
        "subtask": "math",
    },
    {
        "messages": [
            {"role": "system", "content": "You are concise."},
            {"role": "user", "content": "Translate 'bonjour' to English."},
            {"role": "assistant", "content": "Hello."},
        ],
        "subtask": "translation",
        "metadata": {"source": "demo"},
    },
]


class DatasetCreate(BaseModel):
    """JSON form of an upload (the other form is multipart: a JSONL ``file`` and a ``name``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "demo-pool", "records": EXAMPLE_RECORDS}]},
    )

    name: str = Field(min_length=1, max_length=200)
    records: list[Any] = Field(
        description="records as {prompt, response} or {messages: [...]}, optional id, subtask, "
        "metadata; no other field (put anything else in metadata)"
    )


class DuplicateRead(BaseModel):
    index: int = Field(description="0-based position of the skipped record in the upload")
    record_id: str
    duplicate_of: str = Field(description="record_id of the kept record with the same content")


class DatasetRead(BaseModel):
    id: str
    name: str
    n_records: int
    n_duplicates: int
    n_prompt_only: int = Field(
        description="records with a prompt but no response; only NICE probes with a reward "
        "that needs no label may have them"
    )
    duplicates: list[DuplicateRead]
    subtasks: dict[str, int] = Field(
        description="records per subtask (records without one omitted)"
    )
    content_hash: str
    created_at: datetime


class MessageRead(BaseModel):
    role: str
    content: str


class RecordRead(BaseModel):
    record_id: str
    position: int
    subtask: str | None
    messages: list[MessageRead]
    metadata: dict[str, Any]
