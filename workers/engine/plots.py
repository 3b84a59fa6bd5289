"""Figures people read: rendered in the worker (matplotlib, no display) and stored as blobs.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot's global
state, so concurrent tasks in one process cannot draw on each other's figures.
"""

from __future__ import annotations

import io
import itertools
from typing import Any, Literal

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from workers.engine.errors import InvalidInput
from workers.engine.studies import METRICS, StudyResult

PlotFormat = Literal["png", "svg"]

METRIC_LABELS = {
    "s_in": "s_in: paired RelInf(z'_i, z_i)",
    "s_cross": "s_cross: unpaired RelInf(z'_i, z_j), j ≠ i",
}


def study_figure(
    result: StudyResult, *, title: str | None = None, confidence: float = 0.95
) -> Figure:
    """One panel per metric against training step (seed 001 fig. 1-3): a curve per probe set
    with its bootstrap interval as a band; 0 marks "no influence"."""
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, len(METRICS), sharex=True)
    for ax, metric in zip(axes, METRICS, strict=True):
        for name, metrics in result.curves.items():
            points = metrics[metric]
            values = [p.value for p in points]
            (line,) = ax.plot(result.steps, values, marker="o", label=name)
            ax.fill_between(
                result.steps,
                [p.low for p in points],
                [p.high for p in points],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle="--")
        ax.set_title(METRIC_LABELS[metric])
        ax.set_xlabel("training step")
        ax.set_ylabel("RelInf (1 = the example's influence on itself)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="outside right center",
        title=f"probe set\n(band: {confidence:.0%} bootstrap\ninterval over pairs)",
        fontsize="small",
    )
    suffix = f" — {len(result.pair_ids)} pairs"
    figure.suptitle((title or "Strategy study") + suffix)
    return figure


def histogram_figure(summary: dict[str, Any], *, column: str, title: str | None = None) -> Figure:
    """A score column's histogram (from ``summaries.column_summary``) with its median marked."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    histogram = summary["histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    if counts:
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(edges[:-1], counts, width=widths, align="edge", edgecolor="white")
        median = summary["quantiles"]["p50"]
        ax.axvline(median, color="0.2", linestyle="--", label=f"median {median:.4g}")
        ax.legend()
    ax.set_xlabel(column)
    ax.set_ylabel("records")
    missing = f", {summary['missing']} missing" if summary["missing"] else ""
    ax.set_title(f"{title or column}: {summary['count']} records{missing}")
    ax.grid(True, axis="y", alpha=0.3)
    return figure


def render(figure: Figure, fmt: PlotFormat) -> bytes:
    """PNG or SVG bytes of ``figure``; no timestamp is embedded, so equal figures give equal
    bytes."""
    if fmt not in ("png", "svg"):
        raise InvalidInput(f"plot format must be 'png' or 'svg', got {fmt!r}")
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "sift"}):  # stable element ids in SVG
        figure.savefig(buffer, format=fmt, dpi=120, metadata=metadata)
    return buffer.getvalue()
