"""The `infergate stats` table: a pure function of a /stats.json snapshot."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = ("model", "ver", "stage", "device", "req/s", "p50 ms", "p95 ms", "p99 ms", "queue p99", "compute p99",
           "batch", "busy %", "USD/1k inf")


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
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = [f"window {window}; uptime {snapshot['uptime_s']:.0f} s"
             + ("" if snapshot.get("telemetry", True) else "; telemetry is off on this server (--telemetry off)")]
    lines.append("  ".join(c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))))
    for r in rows:
        lines.append("  ".join(v.rjust(w) if i > 3 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    for gpu in snapshot.get("gpus", []):
        lines.append(f"gpu {gpu['index']} {gpu['name']}: utilisation {100 * gpu['utilization_ratio']:.0f} %, "
                     f"power {gpu['power_watts']:.0f} W")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cost(value_usd: float | None) -> str:
    return "-" if value_usd is None else f"{value_usd:.3g}"  # fractions of a cent: significant digits
