"""Select pool records from their influence scores Inf(z_i, D_V) (LESS step 5).

All rules return record ids in ``influence.rank`` order (score descending, ties by record id),
so a selection is a deterministic function of (ids, scores, rule, value).
    top_k        : the k best (all of them if k >= N)
    top_fraction : the ceil(f · N) best, f in (0, 1]          (percentile rule, survey eq. 5)
    threshold    : every record with score >= value          (threshold rule, survey eq. 4)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

from workers.engine.errors import InvalidInput
from workers.engine.influence import rank

Rule = Literal["top_k", "top_fraction", "threshold"]


def select(
    record_ids: Sequence[str], scores: Sequence[float], *, rule: Rule, value: float
) -> list[str]:
    """Record ids chosen by ``rule`` with parameter ``value``, best first."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidInput(f"selection value must be a finite number, got {value!r}")
    order = [record_ids[i] for i in rank(record_ids, scores)]
    if rule == "top_k":
        if value != int(value) or value < 1:
            raise InvalidInput(f"top_k needs an integer k >= 1, got {value!r}")
        return order[: int(value)]
    if rule == "top_fraction":
        if not 0.0 < value <= 1.0:
            raise InvalidInput(f"top_fraction needs f in (0, 1], got {value!r}")
        # round first: 0.3 * 10 is 3.0000000000000004 in floating point, and must give 3
        return order[: math.ceil(round(value * len(order), 9))]
    if rule == "threshold":
        by_id = {rid: float(s) for rid, s in zip(record_ids, scores, strict=True)}
        return [rid for rid in order if by_id[rid] >= value]
    raise InvalidInput(f"unknown selection rule {rule!r}; use top_k, top_fraction or threshold")
