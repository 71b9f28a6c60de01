"""The DDSketch: percentiles within its stated relative error of the exact ones, and merging."""

from __future__ import annotations

import numpy as np
import pytest

from infergate.server.telemetry import sketch
from infergate.server.telemetry.sketch import RELATIVE_ACCURACY, DDSketch

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def _samples(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "lognormal":  # latency-like: median ~1 ms, long tail
        return np.exp(rng.normal(np.log(1e6), 1.0, n))
    if kind == "bimodal":  # fast path and slow path
        return np.concatenate([rng.uniform(50e3, 80e3, n // 2), rng.uniform(20e6, 90e6, n - n // 2)])
    return rng.uniform(1e3, 1e11, n)  # uniform across the whole kept range, 1 us .. 100 s


@pytest.mark.parametrize("kind", ["lognormal", "bimodal", "uniform"])
@pytest.mark.parametrize("n", [1, 7, 1000, 100_000])
def test_quantiles_within_relative_accuracy_of_exact(kind: str, n: int) -> None:
    values = _samples(kind, n, seed=n)
    s = DDSketch()
    s.add(values)
    ordered = np.sort(values)
    for q in QUANTILES:
        exact = ordered[int(np.floor(q * (n - 1)))]  # numpy's method="lower"
        assert exact == np.quantile(values, q, method="lower")
        estimate = s.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (q, estimate, exact)


def test_integer_nanoseconds_as_recorded() -> None:
    values = np.random.default_rng(3).integers(20_000, 5_000_000, 50_000, dtype=np.int64)
    s = DDSketch()
    s.add(values)
    for q in QUANTILES:
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(s.quantile(q) - exact) <= RELATIVE_ACCURACY * exact  # type: ignore[operator]


def test_merge_equals_sketch_of_union() -> None:
    a, b = _samples("lognormal", 5000, 1), _samples("bimodal", 3000, 2)
    left, right, union = DDSketch(), DDSketch(), DDSketch()
    left.add(a)
    right.add(b)
    union.add(np.concatenate([a, b]))
    left.merge(right)
    assert np.array_equal(left.counts, union.counts)
    assert left.count == 8000


def test_empty_and_out_of_range() -> None:
    assert DDSketch().quantile(0.5) is None
    s = DDSketch()
    s.add(np.array([0, 1, 500]))  # below 1 us: all in the first bucket, reported as ~1 us
    assert s.quantile(1.0) == pytest.approx(sketch.MIN_VALUE, rel=RELATIVE_ACCURACY)
    s = DDSketch()
    s.add(np.array([1e15]))  # beyond 1000 s: clamped into the last bucket
    assert s.quantile(0.5) == pytest.approx(sketch.MAX_VALUE, rel=2 * RELATIVE_ACCURACY)
