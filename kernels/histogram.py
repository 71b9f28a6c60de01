"""Per-feature bin counts (the drift monitor's PSI histograms): a Numba kernel and its NumPy reference.

Importing this module compiles the kernel (an explicit signature compiles eagerly; cache=True loads
it from the cache on a restart), so it is imported when a drift profile loads, never on a request.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from numba import njit

logger = logging.getLogger(__name__)

_SIGNATURE = "void(float64[:, ::1], float64[:, ::1], int64[:, ::1])"


def _compile(function: Any) -> Any:
    try:
        return njit(_SIGNATURE, cache=True, nogil=True)(function)
    except RuntimeError as error:  # "cannot cache function ...: no locator available"
        warnings.warn(f"numba cache unavailable ({error}); compiling {function.__name__} uncached",
                      RuntimeWarning, stacklevel=2)
        return njit(_SIGNATURE, cache=False, nogil=True)(function)


def _accumulate_bin_counts_c_contiguous(values: np.ndarray, edges: np.ndarray, counts: np.ndarray) -> None:
    # Invariants (the wrapper checks them): values [rows, features], edges [features, n_edges] sorted
    # ascending per feature (padded with +inf), counts [features, n_edges + 1], all C-contiguous.
    # Bin b of feature f holds values in (edges[f, b-1], edges[f, b]]: the index of the first edge
    # >= value (numpy's searchsorted side="left"); NaN is in no bin.
    n_edges = edges.shape[1]
    for row in range(values.shape[0]):
        for feature in range(values.shape[1]):
            value = values[row, feature]
            if value != value:
                continue
            lo, hi = 0, n_edges
            while lo < hi:
                mid = (lo + hi) >> 1
                if edges[feature, mid] < value:
                    lo = mid + 1
                else:
                    hi = mid
            counts[feature, lo] += 1


accumulate_bin_counts_c_contiguous = _compile(_accumulate_bin_counts_c_contiguous)


def bin_counts_reference(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The NumPy reference: counts [features, n_edges + 1] of values [rows, features] in edges' bins."""
    counts = np.zeros((edges.shape[0], edges.shape[1] + 1), np.int64)
    for feature in range(edges.shape[0]):
        column = values[:, feature]
        column = column[~np.isnan(column)]
        index = np.searchsorted(edges[feature], column, side="left")
        counts[feature] += np.bincount(index, minlength=edges.shape[1] + 1)
    return counts


def bin_counts(values: np.ndarray, edges: np.ndarray, backend: str = "numba") -> np.ndarray:
    """Counts of each feature's values per bin; `values` [rows, features] of any real dtype."""
    values = np.ascontiguousarray(values, np.float64)
    values = values.reshape(len(values), int(np.prod(values.shape[1:])))  # one row per sample, features flat
    edges = np.ascontiguousarray(edges, np.float64)
    if values.shape[1] != edges.shape[0]:
        raise ValueError(f"values have {values.shape[1]} features, edges describe {edges.shape[0]}")
    if backend == "numpy":
        return bin_counts_reference(values, edges)
    counts = np.zeros((edges.shape[0], edges.shape[1] + 1), np.int64)
    accumulate_bin_counts_c_contiguous(values, edges, counts)
    return counts
