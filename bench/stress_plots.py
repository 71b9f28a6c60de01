"""The stress runs' figures: each phase's classes and admitted latency (overload), the requests around the
signal (sigterm). Drawn from the report's JSON, so a committed run can be drawn again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Class -> bar colour; the failure classes in reds.
COLOURS = {"correct": "tab:green", "RESOURCE_EXHAUSTED": "tab:orange", "DEADLINE_EXCEEDED": "tab:purple",
           "UNAVAILABLE": "tab:blue", "other": "tab:red", "mixed_up": "darkred", "LOST": "black"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overload_plot(report: dict[str, Any], path: Path) -> None:
    """Left: requests of each phase by class (stacked); right: P50/P95/P99 of the correct ones."""
    plt = _pyplot()
    phases = report["phases"]
    names = [f"{p['phase']}\n{p['load']:g} clients" if p["mode"] == "closed" else f"{p['phase']}\n{p['load']:.0f}/s"
             for p in phases]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    bottoms = [0] * len(phases)
    for name, colour in COLOURS.items():
        counts = [p["counts"].get(name, 0) for p in phases]
        if any(counts):
            left.bar(names, counts, bottom=bottoms, color=colour, label=name)
            bottoms = [b + c for b, c in zip(bottoms, counts)]
    left.set_ylabel("requests")
    left.set_title("each request id's one outcome")
    left.legend(fontsize="small")
    for k, label in enumerate(("p50", "p95", "p99")):
        values = [p["latency_ms"][label] or 0 for p in phases]
        right.bar([i + (k - 1) * 0.27 for i in range(len(phases))], values, width=0.27, label=label.upper())
    right.set_xticks(range(len(phases)), names)
    right.set_ylabel("ms, correct answers, from their due time")
    right.set_title(f"admitted latency; P99 ratio {report['p99_ratio']}")
    right.legend(fontsize="small")
    _save(plt, fig, path, report, f"overload: capacity {report['capacity_per_s']:.0f}/s, deadline "
          f"{report['deadline_ms']:g} ms")


def sigterm_plot(report: dict[str, Any], path: Path) -> None:
    """Each request sent near the SIGTERM: when it was sent and when it ended, coloured by class."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, colour in COLOURS.items():
        rows = [r for r in report["timeline_ms"] if r[2] == name]
        if rows:
            ax.scatter([r[0] for r in rows], [r[1] - r[0] for r in rows], s=10, color=colour, label=name)
    ax.axvline(0, color="black", linestyle="--", label="SIGTERM")
    if report["sigterm_to_exit_s"] is not None:
        ax.axvline(report["sigterm_to_exit_s"] * 1e3, color="grey", linestyle=":", label="exit")
    ax.set_xlabel("sent, ms after the SIGTERM")
    ax.set_ylabel("time to its outcome, ms")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _save(plt, fig, path, report, f"SIGTERM under load: exit {report['exit_status']} after "
          f"{report['sigterm_to_exit_s']} s (grace {report['grace_s']:g} s)")


def _save(plt: Any, fig: Any, path: Path, report: dict[str, Any], title: str) -> None:
    """The title with the run's verdict, then the PNG."""
    fig.suptitle(f"{title}: {'PASSED' if report['verdict']['passed'] else 'FAILED'}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
