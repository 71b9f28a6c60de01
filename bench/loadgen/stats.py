"""Pure arithmetic of a load test: Poisson send schedules, latency percentiles, the latency CDF."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Percentiles every point reports, as (label, percentile in %).
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))
# Quantiles (0..1) kept per point for the CDF plot: dense in the body, log-spaced into the tail.
CDF_QUANTILES = tuple(sorted({*(i / 100 for i in range(1, 100)), 0.001, 0.005, 0.995, 0.999, 0.9995, 0.9999}))


def poisson_schedule(count: int, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Send offsets in ns from the start: `count` arrivals of a Poisson process over `duration_s`.

    The times are uniform order statistics, which is a Poisson process conditioned on its count
    (inter-arrival gaps exponential): with count = rate x duration the offered load is exactly the
    requested rate, instead of varying by sqrt(count) from run to run.
    """
    if count <= 0 or duration_s <= 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.sort(rng.uniform(0.0, duration_s, count))
    return (offsets * 1e9).astype(np.int64)


def percentiles_ms(latencies_ns: np.ndarray) -> dict[str, float | None]:
    """P50 ... P99.9 in ms (linear interpolation, as numpy's default); None for an empty sample."""
    if latencies_ns.size == 0:
        return {label: None for label, _ in PERCENTILES}
    values = np.percentile(latencies_ns, [p for _, p in PERCENTILES]) / 1e6
    return {label: round(float(v), 4) for (label, _), v in zip(PERCENTILES, values)}


def cdf_points_ms(latencies_ns: np.ndarray, quantiles: Sequence[float] = CDF_QUANTILES) -> list[list[float]]:
    """[[quantile, latency ms], ...] for the CDF plot; quantiles the sample is too small to resolve are left out."""
    if latencies_ns.size == 0:
        return []
    kept = [q for q in quantiles if q * latencies_ns.size >= 1 and (1 - q) * latencies_ns.size >= 1]
    values = np.quantile(latencies_ns, kept) / 1e6 if kept else []
    return [[q, round(float(v), 4)] for q, v in zip(kept, values)]


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as integers allow, larger shares first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def lag_summary_ms(lags_ns: np.ndarray) -> dict[str, float | None]:
    """How late the client sent open-loop requests after their scheduled time: p50, p99 and max, ms."""
    if lags_ns.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(lags_ns, [50, 99]) / 1e6
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(float(lags_ns.max()) / 1e6, 4)}
