"""Seed 001 app. A tab. 3: the three strategy wrappers around a reference example."""

from __future__ import annotations

import pytest

from service.studies.wrappers import COT_DIRECTIVE, wrap_query


def test_each_strategy_wraps_the_reference_as_in_table_3() -> None:
    q, r = "Are these similar: 1. a 2. b. Answer directly.", "similar"
    assert wrap_query("cot", q) == f"{q} {COT_DIRECTIVE}"
    clarify = wrap_query("clarify", "  compose a phrase K S ")
    assert clarify.startswith("[Input]: 'compose a phrase K S' It is known that the [input]")
    assert clarify.endswith("rephrase this question to make its meaning clearer.")
    evaluate = wrap_query("evaluate", q, r)
    assert evaluate.endswith(f"[Input]: {q} [Output]: {r}")
    assert "judge whether the following [output] appropriately responds" in evaluate


def test_bad_strategy_or_missing_response() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        wrap_query("socratic", "q")
    with pytest.raises(ValueError, match="wraps a query and its response"):
        wrap_query("evaluate", "q")
