"""What the Label Studio and Argilla integrations read from Sift, and how they show a record.

Both read through :class:`service.client.Client` (httpx and pydantic only, so this runs in a
virtualenv of the tool's own, such as Label Studio's). Nothing here imports a tool's SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.client import Client, models


def split_messages(messages: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """``(prompt, response)`` as text for a reader: the last assistant turn is the response;
    the turns before it are the prompt (a lone user turn as is, several as ``role: text``)."""
    turns = [(str(m.get("role", "")), str(m.get("content", ""))) for m in messages]
    response = ""
    if turns and turns[-1][0] == "assistant":
        response = turns.pop()[1]
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1], response
    return "\n\n".join(f"{role}: {content}" for role, content in turns), response


def messages_of(record: models.RecordRead) -> list[dict[str, Any]]:
    """A record's messages as JSON (``[{"role", "content"}]``), as the API sent them."""
    return [m.model_dump(mode="json") for m in record.messages]


@dataclass(frozen=True)
class Ranked:
    """A valuation, its first scores (best first) and the pool records they name."""

    valuation: models.ValuationRead
    scores: list[models.ScoreRead]
    records: dict[str, models.RecordRead]
    """By record id; a score whose record the pool no longer holds has none."""

    @property
    def model_version(self) -> str:
        """``sift-<method>-<valuation id>``: what the ML backend's predictions carry."""
        return f"sift-{self.valuation.method}-{self.valuation.id}"


def records_of(sift: Client, dataset_id: str, wanted: set[str]) -> dict[str, models.RecordRead]:
    """The records of ``dataset_id`` whose ids are in ``wanted``, read a page at a time."""
    if not wanted:
        return {}
    return {r.record_id: r for r in sift.datasets.iter_records(dataset_id) if r.record_id in wanted}


def ranked(sift: Client, valuation_id: str, *, top: int | None = None) -> Ranked:
    """Valuation ``valuation_id``'s scores (the first ``top``, default all) and their records;
    a :class:`~service.client.ConflictError` until the valuation has succeeded."""
    valuation = sift.valuations.get(valuation_id)
    scores: list[models.ScoreRead] = []
    for row in sift.valuations.iter_scores(valuation_id):
        if top is not None and len(scores) >= top:
            break
        scores.append(row)
    wanted = {row.record_id for row in scores}
    return Ranked(valuation, scores, records_of(sift, valuation.pool_dataset_id, wanted))
