"""Numba backend: hands validated, C-contiguous batches to the njit kernels in numba_kernels."""

import logging
from typing import Any, NamedTuple

import numba
import numpy as np

from . import numba_kernels as _nk
from .backend import Status
from .program import STATUS_WIDTH, Program, affine_checks, single_affine_params

logger = logging.getLogger(__name__)

_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _Handle(NamedTuple):
    program: Program
    affine_params: np.ndarray | None  # (6, n) rows of a single-affine program (its one-loop path), else None
    checks: dict[np.dtype, int]  # the fast loop's CHECK_* set per output dtype (single-affine programs only)


class NumbaBackend:
    """njit kernels compiled (or loaded from cache) when this module is imported; prange across row chunks."""

    name = "numba"

    def compile(self, program: Program) -> Any:
        # The kernels take the program's arrays as arguments, so there is nothing per program to JIT.
        params = single_affine_params(program)
        checks = {} if params is None else {dtype: affine_checks(params, dtype) for dtype in _OUTPUT_DTYPES}
        return _Handle(program, params, checks)

    def run(self, handle: Any, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        p: Program = handle.program
        n = X.shape[0]
        if handle.affine_params is not None:
            return self._run_affine(handle, X, out, n_threads)
        if n_threads <= 1:
            status = np.zeros((1, STATUS_WIDTH), dtype=np.int64)
            values = np.zeros(1, dtype=np.float64)
            _nk.run_rows(X, out, p.gather_slot, p.gather_col, p.ops, p.fparams, p.iparams, p.n_slots, 0, n,
                         status, values)
        else:
            n_chunks = (n + _nk.ROWS_PER_CHUNK - 1) // _nk.ROWS_PER_CHUNK
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

    @staticmethod
    def _run_affine(handle: _Handle, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        """The single-affine loop; the checking kernel re-runs each row it flags and reports it, or passes it."""
        p, params, checks = handle.program, handle.affine_params, handle.checks[out.dtype]
        assert params is not None  # run() calls this for single-affine programs only
        n = X.shape[0]
        if n_threads > 1:
            n_chunks = (n + _nk.ROWS_PER_CHUNK - 1) // _nk.ROWS_PER_CHUNK
            status = np.zeros((n_chunks, STATUS_WIDTH), dtype=np.int64)
            values = np.zeros(n_chunks, dtype=np.float64)
            numba.set_num_threads(min(n_threads, _nk.max_threads()))
            _nk.affine_parallel(X, out, params, checks, p.gather_slot, p.gather_col, p.ops, p.fparams, p.iparams,
                                p.n_slots, status, values)
            failed = np.flatnonzero(status[:, 0])
            if failed.size == 0:
                return (0, 0, 0, 0.0)
            first = int(failed[0])  # chunks are in row order
            return (int(status[first, 0]), int(status[first, 1]), int(status[first, 2]), float(values[first]))
        # One thread (small batches): the fast loop takes few arguments, as each costs dispatch time.
        start = 0
        while start < n:
            first_bad = int(_nk.affine_rows(X, out, params, checks, start, n))
            if first_bad >= n:
                break
            status = np.zeros((1, STATUS_WIDTH), dtype=np.int64)
            values = np.zeros(1, dtype=np.float64)
            _nk.run_rows(X, out, p.gather_slot, p.gather_col, p.ops, p.fparams, p.iparams, p.n_slots, first_bad,
                         first_bad + 1, status, values)
            if status[0, 0]:
                return (int(status[0, 0]), int(status[0, 1]), int(status[0, 2]), float(values[0]))
            start = first_bad + 1  # a pre-clip overflow that the clip made finite: not an error
        return (0, 0, 0, 0.0)

    def hash_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                    n_features: int, alternate_sign: bool, out: np.ndarray, n_threads: int) -> None:
        numba.set_num_threads(max(1, min(n_threads, _nk.max_threads())))
        _nk.hash_packed(data, starts, ends, row_ptr, n_features, alternate_sign, out)

