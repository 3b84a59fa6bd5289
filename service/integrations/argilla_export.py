"""Export a valuation (or a curation) as an Argilla dataset on disk, with the argilla SDK's
own types (``argilla`` 2.x, the ``argilla`` extra) and no Argilla server.

The folder is what ``rg.Dataset.to_disk`` writes: ``.argilla/dataset.json`` (the dataset
model), ``.argilla/settings.json`` (``rg.Settings.to_json``) and ``records.json`` (the
records' ``to_dict`` list, as ``dataset.records.to_json`` writes it). Load it into a server with
``rg.Dataset.from_disk(path, client=rg.Argilla(api_url=..., api_key=...))``; read it without
one with :func:`load` (``rg.Settings.from_json`` and ``rg.Record.from_dict``).

Each record (``rg.Record``, id = the Sift record id), best first:

* fields ``prompt`` and ``response`` (the record's last assistant turn; the turns before it);
* metadata ``sift_score`` (the valuation's score, as is), ``sift_rank`` (0 = best) and
  ``subtask`` (float, integer and terms properties: Argilla filters and sorts by them);
* a suggestion for question ``keep`` (keep | drop): ``keep`` for the first ``keep_top``
  records (default: the top 10 %), ``drop`` for the rest, with ``score`` = the valuation's
  score min-max scaled to [0, 1] over the exported records (1 = best; Argilla takes suggestion
  scores in [0, 1]) and ``agent`` = ``sift-<method>-<valuation_id>``;
* question ``corrected_response`` (text, optional) for an annotator's correction.

The SDK builds its settings with a client; :func:`offline_client` gives it one that never
connects (any call it made would fail: it points at a closed port). Sift is read with Sift's
Python client (:class:`service.client.Client`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.integrations.records import messages_of, ranked, records_of, split_messages

if TYPE_CHECKING:
    from service.client import Client, models

KEEP = "keep"
CORRECTION = "corrected_response"
OFFLINE_URL = "http://127.0.0.1:9"
"""Where the offline client points (the discard port, closed): nothing is sent there."""


def _rg() -> Any:
    try:
        import argilla as rg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the Argilla export needs argilla 2.x: pip install 'sift[argilla]'"
        ) from e
    return rg


@contextlib.contextmanager
def offline_client() -> Iterator[Any]:
    """An ``rg.Argilla`` that skips its connection check, as the SDK's default client while
    the block runs (settings, fields and questions take the default client)."""
    rg = _rg()

    class _Offline(rg.Argilla):  # type: ignore[misc, name-defined]
        def _validate_connection(self) -> None:
            """No server: nothing to check, and nothing is sent."""

    client = _Offline(api_url=OFFLINE_URL, api_key="sift-offline-export", retries=0)
    previous = rg.Argilla._default_client
    rg.Argilla._default_client = client
    try:
        yield client
    finally:
        rg.Argilla._default_client = previous


def settings(guidelines: str | None = None) -> Any:
    """The dataset's ``rg.Settings`` (call inside :func:`offline_client` or with a client)."""
    rg = _rg()
    return rg.Settings(
        guidelines=guidelines,
        fields=[
            rg.TextField(name="prompt", title="Prompt"),
            rg.TextField(name="response", title="Response", required=False),
        ],
        questions=[
            rg.LabelQuestion(
                name=KEEP,
                title="Keep this record for training?",
                labels=["keep", "drop"],
            ),
            rg.TextQuestion(name=CORRECTION, title="Corrected response (optional)", required=False),
        ],
        metadata=[
            rg.FloatMetadataProperty(name="sift_score", title="Sift score"),
            rg.IntegerMetadataProperty(name="sift_rank", title="Sift rank (0 = best)", min=0),
            rg.TermsMetadataProperty(name="subtask", title="Subtask"),
        ],
        allow_extra_metadata=True,
    )


def scaled(scores: list[float]) -> list[float]:
    """Min-max to [0, 1] (1 = best); all equal: all 1."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0 for _ in scores]
    return [(s - low) / (high - low) for s in scores]


@dataclass(frozen=True)
class Row:
    """One exported record's place: its rank (0 = first) and score (None: a curation's pick
    without a valuation's scores)."""

    record_id: str
    rank: int
    score: float | None


def build_records(
    rows: list[Row],
    records: dict[str, models.RecordRead],
    *,
    agent: str,
    keep_top: int,
) -> list[Any]:
    """``rg.Record`` per row (best first) whose record is in ``records``; a row without a
    score gets no scaled score."""
    rg = _rg()
    present = [row for row in rows if row.record_id in records]
    scored = [(i, row.score) for i, row in enumerate(present) if row.score is not None]
    scale = dict(zip([i for i, _ in scored], scaled([s for _, s in scored]), strict=True))
    out = []
    for position, row in enumerate(present):
        record = records[row.record_id]
        prompt, response = split_messages(messages_of(record))
        metadata: dict[str, Any] = {"sift_rank": row.rank}
        if row.score is not None:
            metadata["sift_score"] = float(row.score)
        if record.subtask:
            metadata["subtask"] = record.subtask
        suggestion = rg.Suggestion(
            question_name=KEEP,
            value="keep" if position < keep_top else "drop",
            score=scale.get(position),
            agent=agent,
            type="model",
        )
        out.append(
            rg.Record(
                id=row.record_id,
                fields={"prompt": prompt, "response": response},
                metadata=metadata,
                suggestions=[suggestion],
            )
        )
    return out


def write(path: Path, name: str, records: list[Any], guidelines: str) -> Path:
    """The ``Dataset.to_disk`` folder at ``path`` (created; must not hold an export)."""
    rg = _rg()
    from argilla.records._io import JsonIO  # what dataset.records.to_json writes with

    path.mkdir(parents=True, exist_ok=True)
    if (path / "records.json").exists() or (path / ".argilla" / "dataset.json").exists():
        raise FileExistsError(f"{path} already holds an Argilla export")
    dataset = rg.Dataset(
        name=name, settings=settings(guidelines), workspace=rg.Workspace(name="sift")
    )
    dataset.to_disk(str(path), with_records=False)  # .argilla/dataset.json and settings.json
    JsonIO.to_json(records, path / "records.json")
    return path


def _default_keep_top(n: int, keep_top: int | None) -> int:
    return keep_top if keep_top is not None else math.ceil(0.1 * n)


def export_valuation(
    sift: Client,
    valuation_id: str,
    path: Path,
    *,
    top: int | None = None,
    keep_top: int | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write valuation ``valuation_id`` (its first ``top`` records, default all) to ``path``;
    a summary (path, name, n_records, keep_top)."""
    found = ranked(sift, valuation_id, top=top)
    valuation = found.valuation
    rows = [Row(s.record_id, s.rank, s.score) for s in found.scores]
    keep = _default_keep_top(len(rows), keep_top)
    guidelines = (
        f"Records of dataset {valuation.pool_dataset_id}, ranked by Sift valuation "
        f"{valuation.id} ({valuation.method}), best first. The suggestion of `keep` is "
        f"'keep' for the top {keep} records; its score is the valuation's score scaled to "
        "[0, 1] (metadata `sift_score` holds it as is)."
    )
    with offline_client():
        built = build_records(rows, found.records, agent=found.model_version, keep_top=keep)
        write(path, name or f"sift-{valuation.id}", built, guidelines)
    return {
        "path": str(path),
        "name": name or f"sift-{valuation.id}",
        "n_records": len(built),
        "keep_top": keep,
    }


def export_curation(
    sift: Client,
    curation_id: str,
    path: Path,
    *,
    valuation_id: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write curation ``curation_id``'s picks (pick order; all suggested 'keep') to
    ``path``; with ``valuation_id`` (a valuation of the same dataset) they carry its scores."""
    curation = sift.curations.get(curation_id)
    picked = curation.record_ids
    if curation.status != "succeeded" or picked is None:
        raise RuntimeError(f"curation {curation_id} has status {curation.status!r}")
    scores: dict[str, float] = {}
    if valuation_id is not None:
        scores = {row.record_id: row.score for row in sift.valuations.iter_scores(valuation_id)}
    rows = [Row(rid, i, scores.get(rid)) for i, rid in enumerate(picked)]
    records = records_of(sift, curation.dataset_id, set(picked))
    agent = f"sift-curation-{curation_id}"
    guidelines = (
        f"Records of dataset {curation.dataset_id} picked by Sift curation {curation_id}, "
        "in pick order (metadata `sift_rank`)."
        + (f" Scores: valuation {valuation_id}." if valuation_id else "")
    )
    with offline_client():
        built = build_records(rows, records, agent=agent, keep_top=len(rows))
        write(path, name or f"sift-{curation_id}", built, guidelines)
    return {
        "path": str(path),
        "name": name or f"sift-{curation_id}",
        "n_records": len(built),
        "keep_top": len(rows),
    }


def load(path: Path) -> tuple[dict[str, Any], Any, list[Any]]:
    """``(dataset model, rg.Settings, [rg.Record])`` of an export, read with the SDK
    offline."""
    rg = _rg()
    with offline_client():
        settings_ = rg.Settings.from_json(path / ".argilla" / "settings.json")
        dataset = json.loads((path / ".argilla" / "dataset.json").read_text())
        raw = json.loads((path / "records.json").read_text())
        records = [rg.Record.from_dict(r) for r in raw]
    return dataset, settings_, records
