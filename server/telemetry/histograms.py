"""Bucket boundaries of the Prometheus histograms: fixed, so histograms merge across replicas."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# Latency bucket upper bounds, s: the E6 series (1, 1.5, 2.2, 3.3, 4.7, 6.8 per decade) from 47 us
# to 10 s. Neighbours differ by at most 1.5x, so histogram_quantile's linear interpolation inside a
# bucket is off by well under that, and every replica uses the same bounds (sum(rate(...)) merges).
_E6 = (1.0, 1.5, 2.2, 3.3, 4.7, 6.8)
LATENCY_BOUNDS_S: tuple[float, ...] = (47e-6, 68e-6) + tuple(
    round(m * 10.0 ** e, 12) for e in range(-4, 1) for m in _E6) + (10.0,)
LATENCY_BOUNDS_NS = np.array([round(b * 1e9) for b in LATENCY_BOUNDS_S], np.float64)
# Batch size bucket upper bounds, rows: powers of two up to 1024.
BATCH_BOUNDS_ROWS: tuple[int, ...] = tuple(2 ** k for k in range(11))
BATCH_BOUNDS = np.array(BATCH_BOUNDS_ROWS, np.float64)


def bucket_counts(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Non-cumulative counts per bucket (value <= bound, Prometheus' `le`), the last one +Inf."""
    index = np.searchsorted(bounds, np.asarray(values, np.float64), side="left")
    return np.bincount(index, minlength=len(bounds) + 1).astype(np.int64)


def cumulative_buckets(counts: np.ndarray, bounds_s: tuple[float, ...] | tuple[int, ...]) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs as prometheus_client's HistogramMetricFamily takes them."""
    totals = np.cumsum(counts)
    labels = [_le(b) for b in bounds_s] + ["+Inf"]
    return [(le, float(n)) for le, n in zip(labels, totals)]


def _le(bound: float) -> str:
    return repr(float(bound)) if not float(bound).is_integer() else f"{float(bound):.1f}"
