"""PNG plots of calibration and tuning: reliability diagrams and the accuracy-cost curve (matplotlib, imported here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt

from infergate.cascade.metrics import ECE_BINS, expected_calibration_error, reliability_bins
from infergate.cascade.tuning import TuningResult

PLOT_EXTRA = "pip install 'infergate[bench]'"  # the setup.py extra that brings matplotlib
DPI = 110  # dots per inch of the PNGs, as bench/loadgen/report.py writes them


def plot_reliability_diagram(path: Path, labels: npt.ArrayLike, probabilities: Mapping[str, npt.ArrayLike],
                             n_bins: int = ECE_BINS, title: str = "reliability diagram") -> Path:
    """Accuracy against mean confidence per confidence bin, one series per entry (e.g. "before", "after")."""
    plt = _pyplot("a reliability diagram")
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0.0, 1.0], [0.0, 1.0], ":", color="grey", label="perfect calibration")
    for index, (name, p) in enumerate(probabilities.items()):
        bins = reliability_bins(p, labels, n_bins)
        filled = bins.counts > 0
        ece = expected_calibration_error(p, labels, n_bins)
        ax.plot(bins.confidence[filled], bins.accuracy[filled], "o-", color=f"C{index}", markersize=4,
                label=f"{name} (ECE {ece:.4f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    _label(ax, "mean confidence in bin (max probability)", "accuracy in bin", f"{title}, {n_bins} bins", "upper left")
    return _save(plt, fig, path)


def plot_accuracy_cost(path: Path, result: TuningResult, title: str = "cascade: accuracy against cost") -> Path:
    """The tuning curve, the last stage alone, the accuracy floor and the chosen point."""
    plt = _pyplot("an accuracy-cost plot")
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    curve = result.curve
    style = "-" if curve.thresholds.shape[1] == 1 else ""  # one threshold: the points lie on one curve
    ax.plot(curve.cost_per_row_usd, curve.accuracy, style, marker=".", markersize=3, linewidth=1,
            label="thresholds swept")
    ax.plot([result.reference_cost_per_row_usd], [result.reference_accuracy], "s", color="C2",
            label="last stage alone")
    ax.axhline(result.reference_accuracy - result.max_accuracy_drop, linestyle="--", color="grey", linewidth=1,
               label=f"accuracy floor (drop {result.max_accuracy_drop:g})")
    chosen = result.chosen
    shown = ", ".join("none" if math.isinf(t) else f"{t:.4g}" for t in chosen.thresholds)
    ax.plot([chosen.cost_per_row_usd], [chosen.accuracy], "*", color="C3", markersize=12,
            label=f"chosen: thresholds {shown}")
    _label(ax, "expected cost per row (USD)", "accuracy", f"{title} ({result.measure})", "lower right")
    return _save(plt, fig, path)


def _pyplot(what: str) -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or an error that says how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ModuleNotFoundError(f"drawing {what} needs matplotlib, which is not installed: {PLOT_EXTRA}",
                                  name="matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(ax: Any, x_label: str, y_label: str, title: str, legend_at: str) -> None:
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc=legend_at)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
