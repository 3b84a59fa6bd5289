"""The Argilla export (service/integrations/argilla_export.py): a valuation (and a curation)
read through Sift's API with ``service.client.Client``, written as ``rg.Dataset.to_disk``
writes, and loaded back with the argilla SDK, without an Argilla server."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.client import Client, ConflictError
from service.db.models import Curation, Job, JobStatus
from service.integrations import argilla_export

rg = pytest.importorskip("argilla")

RANKED = [("p3", 0.9), ("p0", 0.25), ("p4", 0.0), ("p1", -0.5), ("p2", -1.75)]
RECORDS = [
    {"id": "p0", "prompt": "q0", "response": "a0", "subtask": "math"},
    {
        "id": "p1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
        ],
        "subtask": "chat",
    },
    {"id": "p2", "prompt": "q2", "response": "a2"},
    {"id": "p3", "prompt": "q3", "response": "a3", "subtask": "math"},
    {"id": "p4", "prompt": "q4", "response": "a4", "metadata": {"source": "x"}},
]


@pytest.fixture()
def scored(make_scored: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_scored(RECORDS, RANKED)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the export does may open a socket (the SDK's client included)."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the Argilla export tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_a_valuation_exports_and_loads_back_with_the_sdk(
    sift: Client, scored: dict[str, Any], tmp_path: Path, no_network: None
) -> None:
    out = tmp_path / "export"
    summary = argilla_export.export_valuation(sift, scored["id"], out, keep_top=2)
    assert summary == {
        "path": str(out),
        "name": f"sift-{scored['id']}",
        "n_records": 5,
        "keep_top": 2,
    }
    assert sorted(p.name for p in out.iterdir()) == [".argilla", "records.json"]
    assert sorted(p.name for p in (out / ".argilla").iterdir()) == [
        "dataset.json",
        "settings.json",
    ]

    # Read back with the SDK's own readers (what rg.Dataset.from_disk uses).
    from argilla.records._io import JsonIO

    with argilla_export.offline_client():
        settings = rg.Settings.from_json(out / ".argilla" / "settings.json")
        records = JsonIO._records_from_json(out / "records.json")
    assert [f.name for f in settings.fields] == ["prompt", "response"]
    assert [q.name for q in settings.questions] == ["keep", "corrected_response"]
    assert isinstance(settings.questions[0], rg.LabelQuestion)
    assert settings.questions[0].labels == ["keep", "drop"]
    assert {m.name: type(m) for m in settings.metadata} == {
        "sift_score": rg.FloatMetadataProperty,
        "sift_rank": rg.IntegerMetadataProperty,
        "subtask": rg.TermsMetadataProperty,
    }
    assert json.loads((out / ".argilla" / "dataset.json").read_text())["name"] == summary["name"]

    assert [r.id for r in records] == [rid for rid, _ in RANKED]  # best first
    scores = dict(RANKED)
    low, high = min(scores.values()), max(scores.values())
    for rank, record in enumerate(records):
        assert isinstance(record, rg.Record)
        assert record.metadata["sift_score"] == scores[record.id]
        assert record.metadata["sift_rank"] == rank
        suggestion = record.suggestions["keep"]
        assert suggestion.value == ("keep" if rank < 2 else "drop")
        assert math.isclose(suggestion.score, (scores[record.id] - low) / (high - low))
        assert suggestion.agent == f"sift-less-{scored['id']}"
    by_id = {r.id: r for r in records}
    assert by_id["p1"].fields == {"prompt": "system: Be brief.\n\nuser: q1", "response": "a1"}
    assert by_id["p1"].metadata["subtask"] == "chat"
    assert by_id["p0"].fields == {"prompt": "q0", "response": "a0"}
    assert "subtask" not in by_id["p2"].metadata

    # The module's own loader agrees, and a second export into the folder is refused.
    dataset, settings_, loaded = argilla_export.load(out)
    assert [r.id for r in loaded] == [r.id for r in records]
    assert [r.suggestions["keep"].score for r in loaded] == [
        r.suggestions["keep"].score for r in records
    ]
    with pytest.raises(FileExistsError):
        argilla_export.export_valuation(sift, scored["id"], out)


def test_top_and_the_default_keep_share(
    sift: Client, scored: dict[str, Any], tmp_path: Path
) -> None:
    summary = argilla_export.export_valuation(sift, scored["id"], tmp_path / "a", top=3)
    assert summary["n_records"] == 3 and summary["keep_top"] == 1  # ceil(10 % of 3)
    _, _, records = argilla_export.load(tmp_path / "a")
    assert [r.id for r in records] == ["p3", "p0", "p4"]
    # scaled over the exported records: best 1, worst 0
    assert [r.suggestions["keep"].score for r in records] == [
        1.0,
        pytest.approx(0.2778, abs=1e-4),
        0.0,
    ]
    assert [r.suggestions["keep"].value for r in records] == ["keep", "drop", "drop"]


def test_a_valuation_that_has_not_succeeded_is_refused(
    sift: Client, make_valuation: Any, tmp_path: Path
) -> None:
    running = make_valuation()
    with pytest.raises(ConflictError, match="409"):
        argilla_export.export_valuation(sift, running["id"], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_curation_exports_in_pick_order_with_a_valuations_scores(
    client: TestClient, db: Session, sift: Client, scored: dict[str, Any], tmp_path: Path
) -> None:
    pool = scored["pool_dataset_id"]
    score_set = client.post("/v1/score-sets", json={"scorer": "text", "dataset_id": pool})
    assert score_set.status_code == 202, score_set.text
    curation = client.post(
        "/v1/curations",
        json={
            "dataset_id": pool,
            "pick": {"method": "random"},
            "budget": 2,
        },
    )
    assert curation.status_code == 202, curation.text
    row = db.get(Curation, curation.json()["id"])
    assert row is not None
    row.record_ids, row.n_selected = ["p2", "p0"], 2
    job = db.get(Job, row.job_id)
    assert job is not None
    job.status = JobStatus.succeeded.value
    db.commit()
    argilla_export.export_curation(sift, row.id, tmp_path / "c", valuation_id=scored["id"])
    _, _, records = argilla_export.load(tmp_path / "c")
    assert [r.id for r in records] == ["p2", "p0"]
    assert [r.metadata["sift_rank"] for r in records] == [0, 1]
    assert [r.metadata["sift_score"] for r in records] == [-1.75, 0.25]
    assert [r.suggestions["keep"].value for r in records] == ["keep", "keep"]
    assert [r.suggestions["keep"].score for r in records] == [0.0, 1.0]
    # without scores: ranks only
    argilla_export.export_curation(sift, row.id, tmp_path / "d")
    _, _, records = argilla_export.load(tmp_path / "d")
    assert "sift_score" not in records[0].metadata
    assert records[0].suggestions["keep"].score is None
