"""DDSketch: a mergeable quantile sketch with a fixed relative error, over a dense bucket array."""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

RELATIVE_ACCURACY = 0.01  # any quantile is within 1 % of the exact sample value at that rank
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)  # ratio between consecutive bucket bounds
_LOG_GAMMA = math.log(GAMMA)
MIN_VALUE = 1_000.0  # smallest value kept apart, ns (1 us); smaller ones count in the first bucket
MAX_VALUE = 1e12  # largest value kept apart, ns (1000 s); larger ones count in the last bucket
_MIN_KEY = math.ceil(math.log(MIN_VALUE) / _LOG_GAMMA)
BUCKETS = math.ceil(math.log(MAX_VALUE) / _LOG_GAMMA) - _MIN_KEY + 1  # ~1040: 8 KiB of int64 per sketch
# Each bucket's representative value: the point within RELATIVE_ACCURACY of both of its bounds.
_REPRESENTATIVE = 2 * GAMMA ** np.arange(_MIN_KEY, _MIN_KEY + BUCKETS, dtype=np.float64) / (GAMMA + 1)


def bucket_counts(values: np.ndarray) -> np.ndarray:
    """Counts of `values` per sketch bucket: bucket k holds (gamma^(k-1), gamma^k] above MIN_VALUE."""
    if len(values) == 0:
        return np.zeros(BUCKETS, np.int64)
    logs = np.log(np.maximum(np.asarray(values, np.float64), 1.0)) / _LOG_GAMMA
    keys = np.clip(np.ceil(logs).astype(np.int64) - _MIN_KEY, 0, BUCKETS - 1)
    return np.bincount(keys, minlength=BUCKETS).astype(np.int64)


def quantile(counts: np.ndarray, q: float) -> float | None:
    """The q-quantile (0..1) of the values counted in `counts` (a sketch's buckets); None when empty.

    Rank q*(n-1), rounded down, as numpy's method="lower": the value returned is within
    RELATIVE_ACCURACY of the sample at that rank (for samples between MIN_VALUE and MAX_VALUE).
    """
    total = int(counts.sum())
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    index = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
    return float(_REPRESENTATIVE[index])


class DDSketch:
    """A mergeable quantile sketch of positive values (here nanoseconds)."""

    __slots__ = ("counts",)

    def __init__(self, counts: np.ndarray | None = None) -> None:
        self.counts = np.zeros(BUCKETS, np.int64) if counts is None else counts

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        self.counts += bucket_counts(values)

    def merge(self, other: DDSketch) -> None:
        """Adds another sketch's values: the result is the sketch of both sample sets, exactly."""
        self.counts += other.counts

    def quantile(self, q: float) -> float | None:
        return quantile(self.counts, q)
