"""Cython backend: hands validated, C-contiguous batches to the ahead-of-time kernels in _cython_kernels."""

import logging
from typing import Any

import numpy as np

from . import _cython_kernels as _ck
from .backend import Status
from .program import Program

logger = logging.getLogger(__name__)

class CythonBackend:
    """Ahead-of-time kernels; nogil, OpenMP across row chunks when n_threads > 1."""

    name = "cython"

    def compile(self, program: Program) -> Any:
        return _ck.ProgramKernel(program.n_features_in, program.n_out, program.n_slots, program.gather_slot,
                                 program.gather_col, program.ops.reshape(-1), program.fparams, program.iparams)

    def run(self, handle: Any, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        status: Status = handle.run(X, out, n_threads)
        return status

    def hash_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                    n_features: int, alternate_sign: bool, out: np.ndarray, n_threads: int) -> None:
        _ck.hash_packed(data, starts, ends, row_ptr, n_features, alternate_sign, out, n_threads)

    def hash_objects(self, rows: Any, n_features: int, alternate_sign: bool, out: np.ndarray) -> tuple[int, int, int]:
        """Hash str/bytes tokens straight from Python lists; (code, row, position) as _ck.hash_objects."""
        result: tuple[int, int, int] = _ck.hash_objects(rows, n_features, alternate_sign, out)
        return result


def split_bytes_tensor(raw: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    """Locate KServe BYTES elements in raw; -1 on success else the first bad element (see the .pyx)."""
    failed: int = _ck.split_bytes_tensor(raw, starts, ends)
    return failed
