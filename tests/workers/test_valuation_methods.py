"""The valuation-method interface (``workers.engine.valuation_method``): every method the API
accepts is declared once in the engine, the API's view of it agrees, the glue reads only the
declarations, and stored features of a retired layer grouping are never reused."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import get_args

from service.db.models import METHODS as DB_METHODS
from workers import contracts
from workers.contracts import ValuationSettings
from workers.engine import methods
from workers.tasks import valuation
from workers.tasks.valuation import _projector_matches

REPO = Path(__file__).resolve().parents[2]


def test_the_api_and_the_database_know_exactly_the_engines_methods() -> None:
    assert set(get_args(contracts.Method)) == set(methods.METHODS) == set(DB_METHODS)
    declared = methods.METHODS.values()
    assert set(contracts.SELF_INFLUENCE_METHODS) == {m.name for m in declared if not m.needs_probes}
    assert set(contracts.POLICY_METHODS) == {m.name for m in declared if m.needs_reward}
    for method in declared:  # every settings section it reads exists
        assert set(method.settings) <= set(ValuationSettings.model_fields), method.name


def test_features_checkpoints_and_projection_of_each_method() -> None:
    table = {
        m.name: (m.pool_features, m.probe_features, m.checkpoints, m.projection, m.pool_passes)
        for m in methods.METHODS.values()
    }
    assert table == {
        "less": ("adam", "sgd", "all", "flat", 1),
        "tracin": ("sgd", "sgd", "all", "flat", 1),  # plain gradients on both sides
        "tracin_adam": ("adam", "sgd", "all", "flat", 1),
        "nice": ("adam", "policy", "all", "flat", 1),
        "datainf": ("sgd", "sgd", "last", "layerwise", 3),
        "nice_if": ("sgd", "policy", "last", "layerwise", 3),
        "self_influence": ("sgd", None, "all", "flat", 1),  # reads what tracin stores
        "self_influence_adam": ("adam", None, "all", "flat", 1),  # what less stores
        "self_influence_token_weighted": ("sgd", None, "all", "flat", 1),
    }
    assert methods.get("datainf").checkpoints_used([1, 2, 3]) == [3]
    assert methods.get("self_influence").checkpoints_used([1, 2, 3]) == [1, 2, 3]


def test_the_glue_never_branches_on_a_method_name() -> None:
    """No comparison in the valuation tasks' code involves a method name, and no list of
    methods is used there (settings sections such as "nice" may still be named)."""
    tree = ast.parse(inspect.getsource(valuation))
    names = set(methods.METHODS)
    compared = [
        leaf.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare | ast.match_case)
        for leaf in ast.walk(node)
        if isinstance(leaf, ast.Constant) and leaf.value in names
    ]
    assert not compared
    sections = set(ValuationSettings.model_fields)  # "nice", "datainf": settings, not methods
    keyed = [  # a lookup table keyed by method, e.g. {"nice": "less"}.get(method)
        key.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and key.value in names - sections
    ]
    assert not keyed
    identifiers = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    identifiers |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not {i for i in identifiers if i.endswith("_METHODS")}


def test_generated_method_reference_in_docs_is_current() -> None:
    doc = (REPO / "docs" / "methods.md").read_text()
    assert methods.with_generated_section(doc) == doc, (
        "docs/methods.md is stale: python -m workers.engine.methods docs/methods.md"
    )
    for name in methods.METHODS:
        assert f"### `{name}`" in doc


def test_layerwise_features_match_only_the_current_per_tensor_grouping() -> None:
    settings = ValuationSettings.model_validate({"datainf": {"dim_per_layer": 256}})

    def matches(spec: str, layout: str = "layerwise") -> bool:
        return _projector_matches(layout, settings, {"projector": spec, "seed": 0, "dim": 0})  # type: ignore[arg-type]

    assert matches("layerwise:v2:srht-blocks:v1:256,128,256:4096,128,512")
    assert not matches("layerwise:v2:srht-blocks:v1:256,256:4096,512", "flat")
    assert not matches("layerwise:v2:srht-blocks:v1:128,128:4096,512")  # another width
    assert not matches("layerwise:v1:srht-blocks:v1:256,256")  # one layer per module (v1)
    assert not matches("srht-blocks:v1")
    flat = ValuationSettings.model_validate({"projection": {"dim": 64}})
    stored = {"projector": "srht-blocks:v1", "seed": 0, "dim": 64}
    assert _projector_matches("flat", flat, stored)
    assert not _projector_matches("flat", flat, {**stored, "dim": 128})
    assert not _projector_matches("flat", flat, {**stored, "seed": 1})
