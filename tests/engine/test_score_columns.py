"""The columns the API documents for each scorer are the ones the engine computes; the reward
scorer's glue and knn's report."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from workers.contracts import IFD_COLUMNS, QUALITY_COLUMNS, TEXT_COLUMNS
from workers.engine.diversity import diversity_report, knn_distance
from workers.engine.errors import EngineError
from workers.engine.quality import QualityScores
from workers.engine.rewards import RewardItem
from workers.engine.summaries import column_summary
from workers.engine.text_stats import TextStats
from workers.tasks.score_set import reward_column, reward_item


def test_contract_columns_match_the_engine() -> None:
    quality = [
        f.name for f in fields(QualityScores) if f.name not in ("record_ids", "n_response_tokens")
    ]
    assert quality == [*QUALITY_COLUMNS, *IFD_COLUMNS]
    assert [f.name for f in fields(TextStats)] == list(TEXT_COLUMNS)


def test_column_summary_by_hand() -> None:
    summary = column_summary([1.0, None, 3.0, 2.0, 4.0], bins=3)
    assert summary["count"] == 4 and summary["missing"] == 1
    assert summary["mean"] == 2.5 and summary["min"] == 1.0 and summary["max"] == 4.0
    assert abs(summary["std"] - (5 / 3) ** 0.5) < 1e-12  # deviations ±1.5, ±0.5: 5 / (4 - 1)
    assert summary["quantiles"]["p50"] == 2.5
    assert summary["quantiles"]["p25"] == 1.75  # linear: 1 + 0.75 * (2 - 1)
    assert summary["histogram"]["edges"] == [1.0, 2.0, 3.0, 4.0]
    assert summary["histogram"]["counts"] == [1, 1, 2]  # the last bin holds 3 and 4
    empty = column_summary([None, None])
    assert empty["count"] == 0 and empty["missing"] == 2 and empty["mean"] is None


# --- the reward scorer (workers.tasks.score_set) ------------------------------------------------

CHECK = "def check(f):\n    assert f(2) == 4\n"


def _item(record_id: str, response: str, **metadata: object) -> RewardItem:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "earlier turn"},
        {"role": "user", "content": f"question {record_id}"},
        {"role": "assistant", "content": response},
    ]
    return reward_item(record_id, messages, metadata)


def test_a_record_is_rewarded_as_nice_rewards_a_sample() -> None:
    item = _item("r0", "the answer", label="answer", task="qa")
    assert item == RewardItem(
        probe_id="r0",
        prompt="question r0",  # the last user message, as NICE's prompt text
        response="the answer",
        label="answer",
        metadata={"label": "answer", "task": "qa"},
    )
    assert _item("r1", "x", label=42).label is None  # labels are text
    assert _item("r2", "x").label is None
    assert _item("r5", "x", label="").label is None  # as the API: a label is non-empty
    no_user = reward_item("r3", [{"role": "assistant", "content": "hi"}], {})
    assert no_user.prompt == "" and no_user.response == "hi"
    with pytest.raises(EngineError, match="'r4' has no response"):
        reward_item("r4", [{"role": "user", "content": "q?"}], {})


def test_reward_column_runs_the_engine_rewards() -> None:
    items = [_item("a", "It is Paris.", label="paris"), _item("b", "Lyon", label="Paris")]
    assert reward_column({"kind": "contains"}, items) == [1.0, 0.0]
    assert reward_column({"kind": "contains", "ignore_case": False}, items) == [0.0, 0.0]
    assert reward_column({"kind": "exact_match"}, [_item("c", " PARIS ", label="paris")]) == [1.0]
    numbers = [_item("n", "so 1,234.5 in all", label="1234.5"), _item("m", "no", label="1")]
    assert reward_column({"kind": "numeric"}, numbers) == [1.0, 0.0]
    programs = [
        _item("p", "def f(x):\n    return 2 * x\n", test=CHECK, entry_point="f"),
        _item("q", "def f(x):\n    return x + 1\n", test=CHECK, entry_point="f"),
    ]
    assert reward_column({"kind": "python_tests", "program": "response"}, programs) == [1.0, 0.0]


def test_reward_column_failures_fail_like_nice() -> None:
    unlabelled = [_item("a", "x", label="x"), _item("b", "y"), _item("c", "z", label=3)]
    with pytest.raises(
        EngineError,
        match=r"2 records have no non-empty string metadata.label.*'b', 'c'",
    ):
        reward_column({"kind": "regex", "pattern": "(x)"}, unlabelled)
    with pytest.raises(EngineError, match="metadata.test"):
        reward_column({"kind": "python_tests"}, [_item("p", "pass")])
    with pytest.raises(EngineError, match="unknown reward kind"):
        reward_column({"kind": "vibes"}, [])
    dead = {"kind": "http_judge", "url": "http://127.0.0.1:9/judge", "retries": 0, "timeout_s": 2}
    with pytest.raises(EngineError, match="http judge"):
        reward_column(dead, [_item("j", "anything")])


# --- knn's dataset-level report ----------------------------------------------------------------


def test_the_report_knn_mean_is_the_mean_of_the_knn_column() -> None:
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    report = diversity_report(x, n_clusters=4, k=3, seed=1)
    column = knn_distance(x, 3)
    assert report.knn_mean == pytest.approx(float(column.double().mean()), abs=1e-12)
    assert 1.0 <= report.vendi <= 12 and report.inertia >= 0
    assert report.to_dict() == {
        "n": 30,
        "vendi": report.vendi,
        "knn_mean": report.knn_mean,
        "k": 3,
        "inertia": report.inertia,
        "n_clusters": 4,
        "seed": 1,
    }
