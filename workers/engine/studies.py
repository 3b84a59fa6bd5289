"""Swift data-strategy studies (seed 001 §3-4): is a data-creation strategy worth it?

Given checkpoints θ_t of a fine-tuning run, an evaluation set Z = (z_1..z_n) and a probe set
Z' = (z'_1..z'_n) made with the strategy under study, paired so that z'_i was built from (or
resembles) z_i, the relative influence of z on z_0 at θ_t is (eq. 3)

    RelInf(z, z_0; θ_t) = <∇ℓ(z; θ_t), ∇ℓ(z_0; θ_t)> / <∇ℓ(z_0; θ_t), ∇ℓ(z_0; θ_t)>

with ℓ summed (not averaged) over the completion tokens: how much a step on z lowers z_0's loss
relative to a step on z_0 itself, comparable across checkpoints. Then (eqs. 4-5)

    s_in(Z', Z, t)    = (1/n) Σ_i RelInf(z'_i, z_i; θ_t)                 (paired: in-task)
    s_cross(Z', Z, t) = Σ_i Σ_{j≠i} RelInf(z'_i, z_j; θ_t) / (n(n-1))    (unpaired: cross-task)

Both are means over pairs i of a per-pair value (the diagonal entry, or the mean of the row
off the diagonal), so the spread reported is the std of those n values and a seeded percentile
bootstrap interval of their mean.

Verdict for a probe set and metric (``verdict``): "helps" if the interval lies above 0 at every
checkpoint, "hurts" if below 0 at every checkpoint, else "inconclusive"; with a reference probe
set, also the first step from which the metric exceeds the reference's at that and every later
checkpoint (None if it never does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workers.engine.errors import InvalidInput

METRICS: tuple[str, ...] = ("s_in", "s_cross")


def relinf_matrix(probes: Tensor, evaluation: Tensor, *, eval_ids: Sequence[str] = ()) -> Tensor:
    """RelInf(z'_i, z_j) [n', n] for probe gradients [n', d] and evaluation gradients [n, d],
    in float64. An evaluation example with a zero gradient has no RelInf: an error naming it."""
    if probes.ndim != 2 or evaluation.ndim != 2 or probes.shape[1] != evaluation.shape[1]:
        raise InvalidInput(
            f"expected [n', d] and [n, d], got {tuple(probes.shape)}, {tuple(evaluation.shape)}"
        )
    g_probe, g_eval = probes.double(), evaluation.double()
    sq = (g_eval * g_eval).sum(dim=1)
    zero = [i for i, v in enumerate(sq.tolist()) if v == 0]
    if zero:
        names = [eval_ids[i] for i in zero] if eval_ids else zero
        raise InvalidInput(f"evaluation examples with a zero gradient have no RelInf: {names}")
    return (g_probe @ g_eval.T) / sq[None, :]


def pair_values(relinf: Tensor, metric: str) -> Tensor:
    """The n per-pair values whose mean is the metric: RelInf(z'_i, z_i) for s_in, the mean of
    RelInf(z'_i, z_j) over j ≠ i for s_cross."""
    n = relinf.shape[0]
    if relinf.ndim != 2 or relinf.shape[1] != n:
        raise InvalidInput(
            f"a paired study needs a square RelInf matrix, got {tuple(relinf.shape)}"
        )
    if metric == "s_in":
        return relinf.diagonal().clone()
    if metric == "s_cross":
        if n < 2:
            raise InvalidInput("s_cross needs at least two pairs")
        off = relinf.sum(dim=1) - relinf.diagonal()
        return off / (n - 1)
    raise InvalidInput(f"metric must be one of {METRICS}, got {metric!r}")


@dataclass(frozen=True)
class MetricPoint:
    """One metric of one probe set at one checkpoint."""

    value: float
    std: float
    low: float
    high: float
    per_pair: list[float]


def summarize(values: Tensor, *, bootstrap: int, confidence: float, seed: int) -> MetricPoint:
    """Mean of per-pair ``values``, their std, and a percentile bootstrap interval of the mean
    (``bootstrap`` resamples of the pairs with replacement, seeded)."""
    if values.ndim != 1 or values.numel() == 0:
        raise InvalidInput("need a non-empty vector of per-pair values")
    if bootstrap < 1 or not 0 < confidence < 1:
        raise InvalidInput("bootstrap must be >= 1 and confidence in (0, 1)")
    values = values.double()
    n = values.numel()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (bootstrap, n), generator=generator)
    means = values[picks].mean(dim=1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    std = float(values.std(correction=1)) if n > 1 else 0.0
    return MetricPoint(float(values.mean()), std, float(low), float(high), values.tolist())


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "helps" | "hurts" | "inconclusive"
    exceeds_reference_from_step: int | None
    rule: str


VERDICT_RULE = (
    "helps: the bootstrap interval is above 0 at every checkpoint; hurts: below 0 at every "
    "checkpoint; otherwise inconclusive. exceeds_reference_from_step: the first step from which "
    "the metric is above the reference probe set's at that and every later checkpoint."
)


def verdict(
    points: Sequence[MetricPoint],
    steps: Sequence[int],
    reference: Sequence[MetricPoint] | None = None,
) -> Verdict:
    """The documented rule (module docstring) over a metric's curve by step."""
    if not points or len(points) != len(steps):
        raise InvalidInput("need one point per checkpoint step")
    if all(p.low > 0 for p in points):
        outcome = "helps"
    elif all(p.high < 0 for p in points):
        outcome = "hurts"
    else:
        outcome = "inconclusive"
    from_step = None
    if reference is not None:
        if len(reference) != len(points):
            raise InvalidInput("the reference curve needs the same checkpoints")
        for k in range(len(points) - 1, -1, -1):
            if points[k].value > reference[k].value:
                from_step = steps[k]
            else:
                break
    return Verdict(outcome, from_step, VERDICT_RULE)


@dataclass(frozen=True)
class StudyResult:
    """Curves of every probe set and metric over the checkpoints, with verdicts.

    ``curves[name][metric][t]`` is the ``MetricPoint`` at ``steps[t]``; its ``per_pair`` values
    follow ``pair_ids``.
    """

    steps: list[int]
    pair_ids: list[str]
    curves: dict[str, dict[str, list[MetricPoint]]]
    verdicts: dict[str, dict[str, Verdict]]
    reference: str | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: per-pair values keyed by pair id."""
        return {
            "steps": self.steps,
            "pair_ids": self.pair_ids,
            "reference": self.reference,
            "verdict_rule": VERDICT_RULE,
            "probe_sets": [
                {
                    "name": name,
                    "metrics": {
                        metric: {
                            "points": [
                                {
                                    "step": step,
                                    "value": p.value,
                                    "std": p.std,
                                    "low": p.low,
                                    "high": p.high,
                                    "per_pair": dict(zip(self.pair_ids, p.per_pair, strict=True)),
                                }
                                for step, p in zip(self.steps, points, strict=True)
                            ],
                            "verdict": {
                                "outcome": self.verdicts[name][metric].outcome,
                                "exceeds_reference_from_step": self.verdicts[name][
                                    metric
                                ].exceeds_reference_from_step,
                            },
                        }
                        for metric, points in metrics.items()
                    },
                }
                for name, metrics in self.curves.items()
            ],
        }


def run_study(
    evaluation: Sequence[Tensor],
    probe_sets: dict[str, Sequence[Tensor]],
    steps: Sequence[int],
    pair_ids: Sequence[str],
    *,
    reference: str | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> StudyResult:
    """s_in and s_cross of each probe set at each checkpoint, their spread, and verdicts.

    ``evaluation[t]`` holds the evaluation set's gradients [n, d] at ``steps[t]`` and
    ``probe_sets[name][t]`` a probe set's, row i of each belonging to ``pair_ids[i]`` (the
    caller aligns them). Every probe set is resampled with the same seed, so their intervals
    come from the same bootstrap draws of the pairs.
    """
    n_steps = len(steps)
    if n_steps == 0 or len(evaluation) != n_steps:
        raise InvalidInput(f"need evaluation gradients at each of {n_steps} checkpoint steps")
    if reference is not None and reference not in probe_sets:
        raise InvalidInput(f"reference {reference!r} is not a probe set: {sorted(probe_sets)}")
    curves: dict[str, dict[str, list[MetricPoint]]] = {}
    for name, by_step in probe_sets.items():
        if len(by_step) != n_steps:
            raise InvalidInput(
                f"probe set {name!r} has gradients at {len(by_step)} of {n_steps} steps"
            )
        curves[name] = {metric: [] for metric in METRICS}
        for g_eval, g_probe in zip(evaluation, by_step, strict=True):
            if g_eval.shape[0] != len(pair_ids) or g_probe.shape[0] != len(pair_ids):
                raise InvalidInput(
                    f"{len(pair_ids)} pairs, but {g_probe.shape[0]} probe and "
                    f"{g_eval.shape[0]} evaluation rows"
                )
            relinf = relinf_matrix(g_probe, g_eval, eval_ids=pair_ids)
            for metric in METRICS:
                values = pair_values(relinf, metric)
                curves[name][metric].append(
                    summarize(values, bootstrap=bootstrap, confidence=confidence, seed=seed)
                )
    verdicts = {
        name: {
            metric: verdict(
                points,
                steps,
                None if reference in (None, name) else curves[reference][metric],  # type: ignore[index]
            )
            for metric, points in metrics.items()
        }
        for name, metrics in curves.items()
    }
    return StudyResult(list(steps), list(pair_ids), curves, verdicts, reference)
