"""Numba backend: hands validated, C-contiguous batches to the njit kernels in numba_kernels."""

import logging
from typing import Any

import numba
import numpy as np

from . import numba_kernels as _nk
from .backend import Status
from .program import STATUS_WIDTH, Program

logger = logging.getLogger(__name__)


class NumbaBackend:
    """njit kernels compiled (or loaded from cache) when this module is imported; prange across row chunks."""

    name = "numba"

    def compile(self, program: Program) -> Any:
        # The kernels take the program's arrays as arguments, so there is nothing per program to JIT.
        return program

    def run(self, handle: Any, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        p: Program = handle
        if n_threads <= 1:
            status = np.zeros((1, STATUS_WIDTH), dtype=np.int64)
            values = np.zeros(1, dtype=np.float64)
            _nk.run_rows(X, out, p.gather_slot, p.gather_col, p.ops, p.fparams, p.iparams, p.n_slots, 0, X.shape[0],
                         status, values)
        else:
            n_chunks = (X.shape[0] + _nk.ROWS_PER_CHUNK - 1) // _nk.ROWS_PER_CHUNK
            status = np.zeros((max(n_chunks, 1), STATUS_WIDTH), dtype=np.int64)
            values = np.zeros(max(n_chunks, 1), dtype=np.float64)
            numba.set_num_threads(min(n_threads, _nk.max_threads()))
            _nk.run_parallel(X, out, p.gather_slot, p.gather_col, p.ops, p.fparams, p.iparams, p.n_slots, status,
                             values)
        failed = np.flatnonzero(status[:, 0])
        if failed.size == 0:
            return (0, 0, 0, 0.0)
        first = int(failed[0])  # chunks are in row order
        return (int(status[first, 0]), int(status[first, 1]), int(status[first, 2]), float(values[first]))

    def hash_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                    n_features: int, alternate_sign: bool, out: np.ndarray, n_threads: int) -> None:
        numba.set_num_threads(max(1, min(n_threads, _nk.max_threads())))
        _nk.hash_packed(data, starts, ends, row_ptr, n_features, alternate_sign, out)
