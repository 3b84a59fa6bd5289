"""Study figures: one curve and one band per probe set in each metric's panel, labelled."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch
from matplotlib.collections import PolyCollection

from workers.engine.errors import InvalidInput
from workers.engine.plots import render, study_figure, warmup_figure
from workers.engine.studies import METRICS, run_study


@pytest.mark.parametrize("n_sets", [1, 3])
def test_study_figure_has_a_curve_and_band_per_probe_set(n_sets: int) -> None:
    g = torch.Generator().manual_seed(0)
    evaluation = [torch.randn(5, 16, generator=g) for _ in range(4)]
    probes = {
        f"set {k}": [e + k * torch.randn(5, 16, generator=g) for e in evaluation]
        for k in range(n_sets)
    }
    steps = [10, 20, 30, 40]
    result = run_study(evaluation, probes, steps, list("abcde"), bootstrap=50)
    figure = study_figure(result, title="CoT or not")
    axes = figure.axes
    assert len(axes) == len(METRICS)
    for ax, metric in zip(axes, METRICS, strict=True):
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert [line.get_label() for line in curves] == list(probes)
        for line, name in zip(curves, probes, strict=True):
            assert list(line.get_xdata()) == steps
            expected = [p.value for p in result.curves[name][metric]]
            assert list(line.get_ydata()) == pytest.approx(expected)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == n_sets
        assert ax.get_xlabel() == "training step" and "RelInf" in ax.get_ylabel()
        assert metric in ax.get_title()
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == list(probes)

    png = render(figure, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = ET.fromstring(render(figure, "svg"))
    assert svg.tag.endswith("svg")
    with pytest.raises(InvalidInput, match="png"):
        render(figure, "pdf")  # type: ignore[arg-type]


def test_warmup_figure_plots_the_step_losses_epoch_means_and_learning_rate() -> None:
    curve = {
        "step": [1, 2, 3, 4],
        "loss": [5.0, 4.0, 3.5, 3.0],
        "learning_rate": [0.0, 1e-3, 5e-4, 0.0],
        "epochs": [
            {"epoch": 1, "step": 2, "train_loss": 4.5},
            {"epoch": 2, "step": 4, "train_loss": 3.25},
        ],
    }
    figure = warmup_figure(curve, title="run")
    loss_ax, lr_ax = figure.axes
    steps, means = loss_ax.get_lines()
    assert list(steps.get_xdata()) == [1, 2, 3, 4] and list(steps.get_ydata()) == curve["loss"]
    assert list(means.get_xdata()) == [2, 4] and list(means.get_ydata()) == [4.5, 3.25]
    assert list(lr_ax.get_lines()[0].get_ydata()) == curve["learning_rate"]
    assert figure.get_suptitle() == "run: 4 steps, 2 epochs"
    assert render(figure, "png").startswith(b"\x89PNG\r\n\x1a\n")
    assert ET.fromstring(render(figure, "svg")).tag.endswith("svg")


def test_warmup_figure_draws_each_heldout_set_at_the_epoch_ends() -> None:
    curve = {
        "step": [1, 2, 3, 4],
        "loss": [5.0, 4.0, 3.5, 3.0],
        "learning_rate": [0.0, 1e-3, 5e-4, 0.0],
        "epochs": [
            {"epoch": 1, "step": 2, "train_loss": 4.5},
            {"epoch": 2, "step": 4, "train_loss": 3.25},
        ],
        "heldout": [
            {
                "dataset_id": f"ds-{name}",
                "n_records": 3,
                "epochs": [
                    {"epoch": 1, "step": 2, "loss": first},
                    {"epoch": 2, "step": 4, "loss": first - 0.5},
                ],
            }
            for name, first in (("a", 4.8), ("b", 4.9))
        ],
    }
    figure = warmup_figure(curve, title="run")
    loss_ax = figure.axes[0]
    _, _, a, b = loss_ax.get_lines()
    assert list(a.get_xdata()) == [2, 4] and list(a.get_ydata()) == [4.8, 4.3]
    assert list(b.get_ydata()) == [4.9, 4.4]
    legend = loss_ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[2:] == ["held-out ds-a (3 records)", "held-out ds-b (3 records)"]
    assert a.get_marker() == "s"
