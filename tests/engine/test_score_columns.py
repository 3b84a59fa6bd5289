"""The columns the API documents for each scorer are the ones the engine computes."""

from __future__ import annotations

from dataclasses import fields

from workers.contracts import IFD_COLUMNS, QUALITY_COLUMNS, TEXT_COLUMNS
from workers.engine.quality import QualityScores
from workers.engine.summaries import column_summary
from workers.engine.text_stats import TextStats


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
