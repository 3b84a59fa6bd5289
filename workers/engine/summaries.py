"""What a column of per-record scores looks like: the numbers behind a distribution view.

Missing values (None: a score undefined for that record, e.g. MTLD of a text that never
repeats a word) are counted, not dropped silently. Quantiles interpolate linearly between
order statistics (numpy's default); the histogram has equal-width bins over [min, max], the
last bin closed on the right, as ``numpy.histogram``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.engine.errors import InvalidInput

QUANTILES = {"p01": 1, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "p99": 99}


def column_summary(values: Sequence[float | None], *, bins: int = 20) -> dict[str, Any]:
    """count, missing, mean, std (n - 1), min, max, quantiles and a ``bins``-bin histogram."""
    if bins < 1:
        raise InvalidInput(f"bins must be >= 1, got {bins}")
    present = [float(v) for v in values if v is not None]
    if any(not math.isfinite(v) for v in present):
        raise InvalidInput("scores must be finite or missing (None)")
    summary: dict[str, Any] = {"count": len(present), "missing": len(values) - len(present)}
    if not present:
        return summary | {
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
            "quantiles": dict.fromkeys(QUANTILES),
            "histogram": {"edges": [], "counts": []},
        }
    x = np.asarray(present, dtype=np.float64)
    counts, edges = np.histogram(x, bins=bins)
    return summary | {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
        "quantiles": {name: float(np.percentile(x, q)) for name, q in QUANTILES.items()},
        "histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
    }
