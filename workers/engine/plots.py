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


def evaluation_figure(result: dict[str, Any], *, title: str | None = None) -> Figure:
    """LESS tab. 2 as a figure: each arm's target loss (and task metric) with its bootstrap
    interval, one row per arm (random arms' seeds as crosses, the untrained model dashed), and
    each arm's training curve (the mean over its runs) against step. ``result`` is the
    evaluation's stored result."""
    arms = result["arms"]
    has_metric = result.get("metric") is not None
    panels = 3 if has_metric else 2
    figure = Figure(figsize=(5 * panels, 1.2 + 0.5 * max(len(arms), 4)), layout="constrained")
    axes = figure.subplots(1, panels)
    rows = list(range(len(arms)))[::-1]
    names = [a["name"] for a in arms]
    quantities = [("loss", "target response loss (nats/token), lower is better")]
    if has_metric:
        quantities.append(("metric", f"{result['metric']}, higher is better"))
    for ax, (key, label) in zip(axes, quantities, strict=False):
        for y, arm in zip(rows, arms, strict=True):
            q = arm[key]
            ax.errorbar(
                q["mean"],
                y,
                xerr=[[q["mean"] - q["low"]], [q["high"] - q["mean"]]],
                fmt="o",
                capsize=4,
            )
            if len(q["per_seed"]) > 1:
                ax.plot(q["per_seed"], [y] * len(q["per_seed"]), "x", color="0.4")
        before = (result.get("base") or {}).get(key)
        if before is not None:
            ax.axvline(before["mean"], color="0.5", linestyle="--", label="before training")
            ax.legend(fontsize="small")
        ax.set_yticks(rows, names)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    curves = axes[-1]
    for arm in arms:
        runs = [c["loss"] for c in arm["curves"]]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(n)]
        curves.plot(arm["curves"][0]["steps"][:n], mean, label=arm["name"])
    curves.set_xlabel("training step")
    curves.set_ylabel("training loss (batch mean)")
    curves.grid(True, alpha=0.3)
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.legend(fontsize="small")
    level = f"{result['confidence']:.0%}"
    figure.suptitle(
        f"{title or 'Evaluation'}: {result['n_target']} target examples "
        f"(bars: {level} bootstrap interval; x: seeds)"
    )
    return figure


def warmup_figure(curve: dict[str, Any], *, title: str | None = None) -> Figure:
    """A warmup run's training curve (``warmup.LossCurve.to_dict``): the batch loss at every
    optimizer step with each epoch's mean marked at the step that ends it, each held-out set's
    loss at the epochs' ends on the same axes (``curve["heldout"]``, when measured), and beside
    it the learning rate of the linear schedule."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, lr_ax = figure.subplots(1, 2, sharex=True)
    loss_ax.plot(curve["step"], curve["loss"], color="0.6", linewidth=1, label="batch loss")
    epochs = curve["epochs"]
    loss_ax.plot(
        [e["step"] for e in epochs],
        [e["train_loss"] for e in epochs],
        "o-",
        label="epoch mean (train)",
    )
    for entry in curve.get("heldout") or []:
        loss_ax.plot(
            [e["step"] for e in entry["epochs"]],
            [e["loss"] for e in entry["epochs"]],
            "s--",
            label=f"held-out {entry['dataset_id']} ({entry['n_records']} records)",
        )
    loss_ax.set_ylabel("loss (nats per response token)")
    loss_ax.legend(fontsize="small")
    lr_ax.plot(curve["step"], curve["learning_rate"])
    lr_ax.set_ylabel("learning rate")
    for ax in (loss_ax, lr_ax):
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"{title or 'Warmup'}: {len(curve['step'])} steps, {len(epochs)} epochs")
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
