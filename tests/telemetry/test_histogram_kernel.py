"""The drift histogram kernel against its NumPy reference, corner cases included."""

from __future__ import annotations

import numpy as np
import pytest

from infergate.kernels.histogram import bin_counts

EDGES = np.array([[-1.0, 0.0, 1.0, np.inf], [0.5, 0.5, 2.0, 3.0]])  # padded and repeated edges


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("rows", [0, 1, 257])
def test_kernel_matches_reference(dtype: type, rows: int) -> None:
    values = (np.random.default_rng(rows).normal(0, 2, (rows, 2)) * 3).astype(dtype)
    assert np.array_equal(bin_counts(values, EDGES), bin_counts(values, EDGES, backend="numpy"))


def test_edges_nan_and_huge_values() -> None:
    values = np.array([[-1.0, 0.5], [0.0, 0.6], [np.nan, 3.0], [1e300, -1e300], [-np.inf, np.inf]])
    counts = bin_counts(values, EDGES)
    assert np.array_equal(counts, bin_counts(values, EDGES, backend="numpy"))
    # Feature 0: -1 -> bin 0 (<= -1), 0 -> bin 1, NaN -> none, 1e300 -> bin 3 (<= inf), -inf -> bin 0.
    assert counts[0].tolist() == [2, 1, 0, 1, 0]
    # Feature 1: 0.5 -> bin 0, 0.6 -> bin 2, 3.0 -> bin 3, -1e300 -> bin 0, inf -> bin 4 (above every edge).
    assert counts[1].tolist() == [2, 0, 1, 1, 1]


def test_feature_count_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="values have 3 features, edges describe 2"):
        bin_counts(np.zeros((2, 3)), EDGES)
