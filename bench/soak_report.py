"""The soak's files: samples.csv, the plot of RSS, fds, tasks and latency over time, and the printed summary."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infergate.bench.soak_verdict import LOAD, Sample

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def sample_rows(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """One flat dict per sample (errors as CODE=n;...), the CSV's and the JSON's rows."""
    rows = []
    for sample in samples:
        row = asdict(sample)
        row["errors"] = ";".join(f"{k}={v}" for k, v in sorted(sample.errors.items()))
        row["tasks_beyond_in_flight"] = sample.tasks_beyond_in_flight
        rows.append(row)
    return rows


def write_csv(samples: Sequence[Sample], path: Path) -> None:
    rows = sample_rows(samples)
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["t_s"])
        writer.writeheader()
        writer.writerows(rows)


def plot(samples: Sequence[Sample], warmup_s: float, path: Path, title: str) -> None:
    """Four panels over time: RSS, fds, event-loop tasks, client P50/P99 per window; the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [s for s in samples if s.phase == LOAD]
    t = [s.t_s for s in loaded]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    series: list[tuple[Any, list[tuple[str, list[float | None]]], str]] = [
        (axes[0], [("RSS, all server processes", [_mib(s.rss_bytes) for s in loaded]),
                   ("RSS, model process", [_mib(s.rss_main_bytes) for s in loaded])], "MiB"),
        (axes[1], [("open fds, all server processes", [s.fds for s in loaded])], "fds"),
        (axes[2], [("infergate_event_loop_tasks", [s.tasks for s in loaded]),
                   ("tasks beyond the calls in flight", [s.tasks_beyond_in_flight for s in loaded])], "tasks"),
        (axes[3], [("P50", [s.p50_ms for s in loaded]), ("P99", [s.p99_ms for s in loaded])], "ms (window)"),
    ]
    for ax, lines, unit in series:
        for label, values in lines:
            points = [(x, y) for x, y in zip(t, values) if y is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
            else:
                ax.text(0.5, 0.5, f"{label}: not exported", transform=ax.transAxes, ha="center")
        ax.axvspan(0, warmup_s, color="0.9", label="warm-up")
        ax.set_ylabel(unit)
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    errors = [s.t_s for s in loaded if s.errors]
    for x in errors:
        axes[3].axvline(x, color="red", alpha=0.4)
    axes[-1].set_xlabel("seconds since the load started")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mib(value: int | None) -> float | None:
    return value / MIB if value is not None else None


def summary_text(report: dict[str, Any]) -> str:
    v = report["verdict"]
    rss = [v.get("rss_baseline_bytes"), v.get("rss_final_bytes"), v.get("rss_max_bytes")]
    lines = [
        f"soak: {report['duration_s']:g} s at {report['rate_per_s']:.1f}/s ({report['load']:g}x of "
        f"{report['capacity_per_s']:.1f}/s), {report['accounting']['sent']} requests, "
        f"{report['accounting']['counts']['correct']} correct; warm-up {v['warmup_s']:g} s ({v['warmup_rule']})",
        "RSS MiB baseline/final/max: " + " / ".join(f"{_mib(x):.1f}" if x else "-" for x in rss)
        + f"; growth {v.get('rss_growth_pct')} % (< {v['max_rss_growth_pct']:g})",
        f"fds baseline/final {v.get('fds_baseline')}/{v.get('fds_final')}, idle before/after "
        f"{v.get('fds_idle_before')}/{v.get('fds_idle_after')} (slack {v['fd_slack']})",
        f"tasks beyond in-flight baseline/final {v.get('tasks_beyond_in_flight_baseline')}/"
        f"{v.get('tasks_beyond_in_flight_final')}, idle before/after {v.get('tasks_idle_before')}/"
        f"{v.get('tasks_idle_after')} (gauge {v.get('tasks_gauge')}, slack {v['task_slack']})",
        "verdict: " + ("PASSED" if v["passed"] else "FAILED"), *[f"  - {p}" for p in v["problems"]],
    ]
    return "\n".join(lines)
