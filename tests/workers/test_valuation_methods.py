"""Which features and aggregation each valuation method uses, and that stored features of a
retired layer grouping are never reused (the glue in ``workers.tasks.valuation``)."""

from __future__ import annotations

from workers.contracts import ValuationSettings
from workers.tasks.valuation import _pool_kind, _probe_kind, _projector_matches


def test_tracin_is_plain_gradients_on_both_sides_and_tracin_adam_keeps_adam() -> None:
    kinds = {m: (_pool_kind(m), _probe_kind(m)) for m in ("less", "tracin", "tracin_adam")}
    assert kinds == {
        "less": ("adam", "sgd"),
        "tracin": ("sgd", "sgd"),
        "tracin_adam": ("adam", "sgd"),
    }
    assert (_pool_kind("datainf"), _pool_kind("nice"), _probe_kind("nice_if")) == (
        "sgd",
        "adam",
        "policy",
    )


def test_layerwise_features_match_only_the_current_per_tensor_grouping() -> None:
    settings = ValuationSettings.model_validate({"datainf": {"dim_per_layer": 256}})

    def matches(spec: str, method: str = "datainf") -> bool:
        return _projector_matches(method, settings, {"projector": spec, "seed": 0, "dim": 0})

    assert matches("layerwise:v2:srht-blocks:v1:256,128,256:4096,128,512")
    assert not matches("layerwise:v2:srht-blocks:v1:256,256:4096,512", "tracin")
    assert not matches("layerwise:v2:srht-blocks:v1:128,128:4096,512")  # another width
    assert not matches("layerwise:v1:srht-blocks:v1:256,256")  # one layer per module (v1)
    assert not matches("srht-blocks:v1")


def test_self_influence_reads_the_pool_features_tracin_and_less_store() -> None:
    from workers.tasks.valuation import _checkpoints_used, _has_probes

    assert (_pool_kind("self_influence"), _pool_kind("self_influence_adam")) == ("sgd", "adam")
    assert (_pool_kind("self_influence"), _pool_kind("self_influence_adam")) == (
        _pool_kind("tracin"),
        _pool_kind("less"),
    )
    assert not _has_probes("self_influence") and not _has_probes("self_influence_adam")
    assert all(_has_probes(m) for m in ("less", "tracin", "tracin_adam", "nice", "datainf"))
    assert _checkpoints_used("self_influence", [1, 2, 3]) == [1, 2, 3]  # every checkpoint
    settings = ValuationSettings.model_validate({"projection": {"dim": 64}})
    flat = {"projector": "srht-blocks:v1", "seed": 0, "dim": 64}
    assert _projector_matches("self_influence", settings, flat)
    assert _projector_matches("self_influence_adam", settings, flat)
