"""What a valuation method is: the features it reads, the checkpoints it uses, its scorer.

A valuation has two stages (``workers.tasks.valuation``): featurize the pool and the probes at
the warmup checkpoints, then stream the stored pool features through a scorer. Methods differ
only in what they ask of those stages, so each states it here, once, in the module that holds
its formula (``workers.engine.methods`` lists them):

- ``pool_features``: ``"sgd"`` plain loss gradients ∇ℓ(z; θ^e) or ``"adam"`` LESS's Adam
  features Γ_e(z) (``workers.engine.gradients``);
- ``probe_features``: ``"sgd"``, ``"policy"`` (NICE's policy gradient of a reward,
  ``workers.engine.nice``), or ``None``: the method values each pool record by itself;
- ``checkpoints``: ``"all"`` warmup checkpoints (TracIn's sum) or the ``"last"`` one;
- ``projection``: ``"flat"`` one block SRHT over all LoRA tensors (width
  ``settings.projection.dim``) or ``"layerwise"`` one per LoRA weight tensor (width
  ``settings.datainf.dim_per_layer``), as the influence-function methods need;
- ``score``: the scores of the stored pool, shard by shard, from a ``ScoringInput``;
  ``pool_passes`` is how often it reads the pool (the job's progress counts them);
- ``settings``: the sections of the valuation's settings it reads beyond the common ones.

The rest (``formula``, ``reference``, ``cost``, ``good_for``) is what docs/methods.md says
about it, generated from here so the two cannot drift apart. This module imports no torch:
the score functions live with their formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import torch

    from workers.engine.features import FeatureSet
    from workers.engine.influence import ShardScores

T = TypeVar("T")

PoolFeatures = Literal["sgd", "adam"]
ProbeFeatures = Literal["sgd", "policy"]
Checkpoints = Literal["all", "last"]
Projection = Literal["flat", "layerwise"]


@dataclass(frozen=True)
class ScoringInput:
    """What a scorer gets: the stored features of the checkpoints the method uses, in epoch
    order, and its settings sections (``ValuationMethod.settings``, as plain dicts)."""

    pool: Callable[[], Iterator[list[FeatureSet]]]
    """A fresh pass over the pool: one item per shard, one feature set per checkpoint."""
    probes: Sequence[FeatureSet]
    """One (whole) probe feature set per checkpoint; empty for a method without probes."""
    mean_lrs: Sequence[float]
    """η̄_e of each checkpoint used."""
    settings: Mapping[str, Mapping[str, Any]]
    device: torch.device | str | None = None
    note: Callable[[str], None] = lambda _message: None
    """Tell the job something worth reading later (e.g. DataInf's λ range)."""


@dataclass(frozen=True)
class ValuationMethod:
    """One valuation method, as the two stages need it (module docstring)."""

    name: str
    title: str
    pool_features: PoolFeatures
    probe_features: ProbeFeatures | None
    checkpoints: Checkpoints
    projection: Projection
    score: Callable[[ScoringInput], Iterator[ShardScores]]
    formula: str
    reference: str
    cost: str
    good_for: str
    pool_passes: int = 1
    settings: tuple[str, ...] = ()

    @property
    def needs_probes(self) -> bool:
        return self.probe_features is not None

    @property
    def needs_reward(self) -> bool:
        """Its probe side is a policy gradient of a reward: the valuation names a reward spec."""
        return self.probe_features == "policy"

    def checkpoints_used(self, checkpoints: Sequence[T]) -> list[T]:
        """The warmup checkpoints (in epoch order) this method reads features at."""
        return list(checkpoints[-1:] if self.checkpoints == "last" else checkpoints)
