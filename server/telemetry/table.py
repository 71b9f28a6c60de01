"""The `infergate stats` table: a pure function of a /stats.json snapshot."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = ("model", "ver", "stage", "device", "req/s", "p50 ms", "p95 ms", "p99 ms", "queue p99", "compute p99",
           "batch", "busy %", "USD/1k inf", "esc %")  # esc %: a cascade stage's rows sent on to the next stage


def stats_table(snapshot: dict[str, Any], window: str) -> str:
    """One row per model version for `window`; '-' where there is nothing to show yet."""
    rows = []
    for model in snapshot["models"]:
        w = model["windows"][window]
        latency = w["latency_ms"]
        busy_pct = 100 * w["busy_s"] / w["seconds"] if w["seconds"] else None
        rows.append([
            model["model"], model["version"], model["stage"] or "-", model["device"],
            _fmt(w["requests_per_s"], 1), _fmt(latency["request"]["p50"], 3), _fmt(latency["request"]["p95"], 3),
            _fmt(latency["request"]["p99"], 3), _fmt(latency["queue"]["p99"], 3), _fmt(latency["compute"]["p99"], 3),
            _fmt(w["mean_batch_rows"], 2), _fmt(busy_pct, 1), _cost(w["cost_per_1k_inferences_usd"]),
            _fmt(100 * w["escalation_rate"] if w.get("escalation_rate") is not None else None, 1),
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = [f"window {window}; uptime {snapshot['uptime_s']:.0f} s"
             + ("" if snapshot.get("telemetry", True) else "; telemetry is off on this server (--telemetry off)")]
    lines.append("  ".join(c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))))
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i > 3 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    lines.extend(_cascade_lines(snapshot["models"], window))
    for gpu in snapshot.get("gpus", []):
        lines.append(f"gpu {gpu['index']} {gpu['name']}: utilisation {100 * gpu['utilization_ratio']:.0f} %, "
                     f"power {gpu['power_watts']:.0f} W")
    return "\n".join(lines)


def _cascade_lines(models: list[dict[str, Any]], window: str) -> list[str]:
    """A line per cascade: the share of rows each stage answered, and the saving against its last stage alone."""
    lines = []
    for row in models:
        w = row["windows"][window]
        if row["stage"] or "saving_ratio" not in w:
            continue
        stages = [r for r in models if r["model"] == row["model"] and r["version"] == row["version"] and r["stage"]]
        answered = ", ".join(f"{r['stage']} {_share(r['windows'][window]['answered_rows'], w['inferences'])}"
                             for r in stages)
        saving = "-" if w["saving_ratio"] is None else f"{100 * w['saving_ratio']:.1f} %"
        alone = row.get("last_stage_alone_cost_per_1k_inferences_usd", w["last_stage_cost_per_1k_inferences_usd"])
        lines.append(f"cascade {row['model']} v{row['version']}: rows answered by {answered}; cost per 1k "
                     f"{_cost(w['cost_per_1k_inferences_usd'])} USD, {stages[-1]['stage']} alone "
                     f"{_cost(alone)}: saving {saving}")
    return lines


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cost(value_usd: float | None) -> str:
    return "-" if value_usd is None else f"{value_usd:.3g}"  # fractions of a cent: significant digits
