"""The interface every kernel backend implements (Cython, Numba, NumPy), so the pipeline can swap them."""

import logging
from typing import Any, Protocol

import numpy as np

from .program import Program

logger = logging.getLogger(__name__)

Status = tuple[int, int, int, float]  # code, row, column, value of the batch's first failing row; code 0 if none


class Backend(Protocol):
    """A kernel backend; `compile` runs at load, `run` and `hash_packed` on requests."""

    name: str

    def compile(self, program: Program) -> Any:
        """Prepare program for run() (JIT, pinning arrays); the returned handle is passed back to run()."""
        ...

    def run(self, handle: Any, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        """Transform X (C-contiguous float32/float64, n x n_features_in) into out (C-contiguous, n x n_out)."""
        ...

    def hash_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                    n_features: int, alternate_sign: bool, out: np.ndarray, n_threads: int) -> None:
        """Add the signed hash of tokens data[starts[t]:ends[t]], t in row i's [row_ptr[i], row_ptr[i+1]), to out[i]."""
        ...
