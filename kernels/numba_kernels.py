"""Numba kernels: the slot program and feature hashing as njit free functions with explicit signatures.

Importing this module compiles every kernel (explicit signatures compile eagerly), so it is imported
at model load, never on a request; with cache=True a restart loads machine code from the cache.
"""

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.typing.templates import Signature

from .program import (
    CHECK_OUTPUT,
    CHECK_PRECLIP,
    K_AFFINE,
    K_AFFINE_DIV,
    K_BUCKETIZE,
    K_COPY,
    K_LOG1P,
    K_ONEHOT,
    STATUS_INPUT_INF,
    STATUS_OUTPUT_NONFINITE,
    STATUS_UNKNOWN_CATEGORY,
)

if TYPE_CHECKING:
    # Generic only in numba's stubs (not at runtime), hence the string annotations that use it.
    from numba.core.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

ROWS_PER_CHUNK = 512  # rows one thread runs between status checks, as the Cython kernels
# Where numba caches when the package directory is read-only (site-packages in an image).
FALLBACK_CACHE_DIR = os.path.join(tempfile.gettempdir(), "infergate-numba-cache")
# numba.config creates its settings from the environment at import time, so type checkers cannot see them.
_NUMBA_CONFIG: Any = numba.config

_KernelT = TypeVar("_KernelT", bound=Callable[..., Any])


def _cache_is_writable() -> bool:
    """numba caches next to this file, else in NUMBA_CACHE_DIR; caching into neither raises at decoration."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    try:
        os.makedirs(here, exist_ok=True)
        return os.access(here, os.W_OK)
    except OSError:
        return False


def max_threads() -> int:
    """Size of numba's thread pool (NUMBA_NUM_THREADS): the most numba.set_num_threads accepts."""
    return int(_NUMBA_CONFIG.NUMBA_NUM_THREADS)


if not _NUMBA_CONFIG.CACHE_DIR and not _cache_is_writable():
    # numba reads NUMBA_CACHE_DIR at import; config.CACHE_DIR is what its cache locator consults later.
    os.makedirs(FALLBACK_CACHE_DIR, exist_ok=True)
    _NUMBA_CONFIG.CACHE_DIR = FALLBACK_CACHE_DIR
    logger.warning("kernels directory not writable; numba cache in %s", FALLBACK_CACHE_DIR)


def _jit(signatures: list[Signature], *, parallel: bool = False, inline: Literal["never", "always"] = "never",
         error_model: Literal["python", "numpy"] = "python") -> Callable[[_KernelT], "Dispatcher[_KernelT]"]:
    """njit with cache=True, falling back to an uncached compile (with a warning) if caching fails.

    numba types a kernel from `signatures` only; the Python annotations on a kernel are for mypy, and
    the returned dispatcher is called with the kernel's own (annotated) signature.
    """

    def decorate(function: _KernelT) -> "Dispatcher[_KernelT]":
        try:
            return njit(signatures, cache=True, nogil=True, parallel=parallel, inline=inline,
                        error_model=error_model)(function)
        except RuntimeError as error:  # "cannot cache function ...: no locator available"
            warnings.warn(f"numba cache unavailable ({error}); compiling {function.__name__} uncached",
                          RuntimeWarning, stacklevel=2)
            return njit(signatures, cache=False, nogil=True, parallel=parallel, inline=inline,
                        error_model=error_model)(function)

    return decorate


i64_1d = types.Array(types.int64, 1, "C", readonly=True)
i64_2d = types.Array(types.int64, 2, "C", readonly=True)
f64_1d_ro = types.Array(types.float64, 1, "C", readonly=True)
f64_1d = types.Array(types.float64, 1, "C")
u8_1d = types.Array(types.uint8, 1, "C", readonly=True)
status_2d = types.Array(types.int64, 2, "C")
REALS = (types.float32, types.float64)


@_jit([types.int64(f64_1d_ro, types.int64, types.int64, types.float64)])
def count_le(fparams: np.ndarray, start: int, stop: int, value: float) -> int:
    """Number of fparams[start:stop] <= value (np.searchsorted side='right')."""
    lo, hi = start, stop
    while lo < hi:
        mid = (lo + hi) >> 1
        if fparams[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo - start


@_jit([types.float64(types.float64, f64_1d_ro, types.int64, types.int64, types.int64)], inline="always")
def affine(v: float, fparams: np.ndarray, poff: int, w: int, t: int) -> float:
    """One K_AFFINE element: impute NaN, affine map, clip (NaN passes the clip to reach the output check)."""
    v = fparams[poff + t] if np.isnan(v) else v
    v = (v - fparams[poff + w + t]) * fparams[poff + 2 * w + t] + fparams[poff + 3 * w + t]
    low, high = fparams[poff + 4 * w + t], fparams[poff + 5 * w + t]
    v = low if v < low else v
    return high if v > high else v


# error_model="numpy": a division by zero gives inf (as NumPy) for the output check, not ZeroDivisionError.
@_jit([types.float64(types.float64, f64_1d_ro, types.int64, types.int64, types.int64)], inline="always",
      error_model="numpy")
def affine_div(v: float, fparams: np.ndarray, poff: int, w: int, t: int) -> float:
    """One K_AFFINE_DIV element: as affine, but divide by the third block (an exact-mode standardize)."""
    v = fparams[poff + t] if np.isnan(v) else v
    v = (v - fparams[poff + w + t]) / fparams[poff + 2 * w + t] + fparams[poff + 3 * w + t]
    low, high = fparams[poff + 4 * w + t], fparams[poff + 5 * w + t]
    v = low if v < low else v
    return high if v > high else v


# error_model="numpy" because affine_div is inlined here, and inlined code compiles under the caller's model.
@_jit([types.int64(f64_1d, i64_2d, f64_1d_ro, i64_1d)], error_model="numpy")
def run_ops(buf: np.ndarray, ops: np.ndarray, fparams: np.ndarray, iparams: np.ndarray) -> int:
    """Run every op record on the scratch row; returns -1, or the index of a one-hot record whose value is unknown."""
    for r in range(ops.shape[0]):
        kind, lo, hi, poff = ops[r, 0], ops[r, 1], ops[r, 2], ops[r, 3]
        w = hi - lo
        if kind == K_AFFINE:
            for t in range(w):
                buf[lo + t] = affine(buf[lo + t], fparams, poff, w, t)
        elif kind == K_AFFINE_DIV:
            for t in range(w):
                buf[lo + t] = affine_div(buf[lo + t], fparams, poff, w, t)
        elif kind == K_LOG1P:
            for t in range(w):
                buf[lo + t] = np.log1p(buf[lo + t])
        elif kind == K_BUCKETIZE:
            ioff = ops[r, 6]
            for t in range(w):
                v = buf[lo + t]
                if v == v:
                    buf[lo + t] = count_le(fparams, iparams[ioff + t], iparams[ioff + t + 1], v)
        elif kind == K_ONEHOT:
            v = buf[ops[r, 4]]
            k, ioff = ops[r, 5], ops[r, 6]
            a, b = poff, poff + k
            while a < b:  # first category >= v
                mid = (a + b) >> 1
                if fparams[mid] < v:
                    a = mid + 1
                else:
                    b = mid
            for j in range(k):
                if iparams[ioff + j] >= 0:
                    buf[iparams[ioff + j]] = 0.0
            if a < poff + k and fparams[a] == v:
                if iparams[ioff + a - poff] >= 0:
                    buf[iparams[ioff + a - poff]] = 1.0
            elif ops[r, 7] == 0:
                return r
        elif kind == K_COPY:
            buf[lo] = buf[ops[r, 4]]
    return -1


def _run_rows(X: np.ndarray, out: np.ndarray, gather_slot: np.ndarray, gather_col: np.ndarray, ops: np.ndarray,
              fparams: np.ndarray, iparams: np.ndarray, n_slots: int, start: int, stop: int, status: np.ndarray,
              values: np.ndarray) -> None:
    """Rows [start, stop) in order; the first failure goes to status[0] (code, row, column) and values[0]."""
    buf = np.zeros(n_slots, dtype=np.float64)
    n_gather, n_out = gather_slot.shape[0], out.shape[1]
    is_identity = n_gather == X.shape[1]
    for k in range(n_gather):
        is_identity &= gather_slot[k] == k and gather_col[k] == k
    # A plain numeric pipeline (one K_AFFINE record over every column) runs input -> output in one loop.
    is_single_affine = (is_identity and ops.shape[0] == 1 and ops[0, 0] == K_AFFINE and ops[0, 1] == 0
                        and ops[0, 2] == n_out and n_out == n_gather)
    for i in range(start, stop):
        n_inf = 0
        for k in range(n_gather):
            n_inf += np.isinf(X[i, gather_col[k]])
        if n_inf:
            for k in range(n_gather):
                if np.isinf(X[i, gather_col[k]]):
                    status[0, 0], status[0, 1], status[0, 2] = STATUS_INPUT_INF, i, gather_col[k]
                    values[0] = X[i, gather_col[k]]
                    return
        if is_single_affine:
            for k in range(n_out):
                out[i, k] = affine(np.float64(X[i, k]), fparams, 0, n_out, k)
        else:
            for k in range(n_gather):
                buf[gather_slot[k]] = X[i, gather_col[k]]
            failed = run_ops(buf, ops, fparams, iparams)
            if failed >= 0:
                status[0, 0], status[0, 1], status[0, 2] = STATUS_UNKNOWN_CATEGORY, i, failed
                values[0] = buf[ops[failed, 4]]
                return
            for k in range(n_out):
                out[i, k] = buf[k]  # the store casts to the output type; the check below sees the cast value
        n_bad = 0
        for k in range(n_out):
            n_bad += not np.isfinite(out[i, k])
        if n_bad:
            for k in range(n_out):
                if not np.isfinite(out[i, k]):
                    status[0, 0], status[0, 1], status[0, 2] = STATUS_OUTPUT_NONFINITE, i, k
                    values[0] = out[i, k]
                    return


def _run_parallel(X: np.ndarray, out: np.ndarray, gather_slot: np.ndarray, gather_col: np.ndarray, ops: np.ndarray,
                  fparams: np.ndarray, iparams: np.ndarray, n_slots: int, status: np.ndarray,
                  values: np.ndarray) -> None:
    """Chunks of rows in parallel; chunk c reports into status[c], values[c]."""
    n = X.shape[0]
    n_chunks = (n + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK
    for c in prange(n_chunks):
        stop = min((c + 1) * ROWS_PER_CHUNK, n)
        run_rows(X, out, gather_slot, gather_col, ops, fparams, iparams, n_slots, c * ROWS_PER_CHUNK, stop,
                 status[c:c + 1], values[c:c + 1])


def _signatures(extra: tuple[types.Type, ...]) -> list[Signature]:
    return [types.void(types.Array(x, 2, "C", readonly=True), types.Array(y, 2, "C"), i64_1d, i64_1d, i64_2d,
                       f64_1d_ro, i64_1d, types.int64, *extra, status_2d, f64_1d)
            for x in REALS for y in REALS]


run_rows = _jit(_signatures((types.int64, types.int64)))(_run_rows)
run_parallel = _jit(_signatures(()), parallel=True)(_run_parallel)


def _affine_row(X: np.ndarray, out: np.ndarray, params: np.ndarray, i: int, is_preclip: bool,
                is_output: bool) -> int:
    """Row i of a single-affine program (see single_affine_params); how many elements fail the CHECK_* tests.

    Inlined at call sites with constant flags, so each copy of the loop carries only its own tests and,
    branch-free, vectorises. params rows: fill, sub, mul, add, low, high (one value per column).
    """
    fill, sub, mul, add, low, high = params[0], params[1], params[2], params[3], params[4], params[5]
    n_bad = 0
    for k in range(out.shape[1]):
        v = np.float64(X[i, k])
        f = fill[k]  # loaded unconditionally, so the NaN select is a blend
        v = f if np.isnan(v) else v
        v = (v - sub[k]) * mul[k] + add[k]
        if is_preclip:
            n_bad += not np.isfinite(v)
        f = low[k]
        v = f if v < f else v
        f = high[k]
        out[i, k] = f if v > f else v
        if is_output:
            n_bad += not np.isfinite(out[i, k])  # the stored value: a float32 output may overflow in the cast
    return n_bad


def _affine_rows(X: np.ndarray, out: np.ndarray, params: np.ndarray, checks: int, start: int, stop: int) -> int:
    """Rows [start, stop) of a single-affine program; the first row flagged by the CHECK_* set checks, or stop."""
    for i in range(start, stop):
        if checks == CHECK_PRECLIP:
            n_bad = affine_row(X, out, params, i, True, False)
        elif checks == CHECK_OUTPUT:
            n_bad = affine_row(X, out, params, i, False, True)
        else:
            n_bad = affine_row(X, out, params, i, True, True)
        if n_bad:
            return i
    return stop


def _affine_parallel(X: np.ndarray, out: np.ndarray, params: np.ndarray, checks: int, gather_slot: np.ndarray,
                     gather_col: np.ndarray, ops: np.ndarray, fparams: np.ndarray, iparams: np.ndarray, n_slots: int,
                     status: np.ndarray, values: np.ndarray) -> None:
    """_affine_rows over chunks of rows in parallel; chunk c re-runs each row it flags on run_rows and reports
    the first failure into status[c], values[c] (a flagged row that run_rows passes is not an error)."""
    n = X.shape[0]
    for c in prange(status.shape[0]):
        i, stop = c * ROWS_PER_CHUNK, min((c + 1) * ROWS_PER_CHUNK, n)
        while i < stop:
            i = affine_rows(X, out, params, checks, i, stop)
            if i >= stop:
                break
            run_rows(X, out, gather_slot, gather_col, ops, fparams, iparams, n_slots, i, i + 1, status[c:c + 1],
                     values[c:c + 1])
            if status[c, 0]:
                break
            i += 1


f64_2d_ro = types.Array(types.float64, 2, "C", readonly=True)
_IN_OUT = [(types.Array(x, 2, "C", readonly=True), types.Array(y, 2, "C")) for x in REALS for y in REALS]
affine_row = _jit([types.int64(x, y, f64_2d_ro, types.int64, types.boolean, types.boolean) for x, y in _IN_OUT],
                  inline="always")(_affine_row)
affine_rows = _jit([types.int64(x, y, f64_2d_ro, types.int64, types.int64, types.int64)
                    for x, y in _IN_OUT])(_affine_rows)
affine_parallel = _jit([types.void(x, y, f64_2d_ro, types.int64, i64_1d, i64_1d, i64_2d, f64_1d_ro, i64_1d,
                                   types.int64, status_2d, f64_1d) for x, y in _IN_OUT],
                       parallel=True)(_affine_parallel)


# numba widens uint32 arithmetic to 64 bits, so each step is done in uint64 and masked back to 32 bits;
# every constant is a uint64 because mixing uint64 with int64 would promote to float64.
MASK32 = np.uint64(0xFFFFFFFF)
_C1, _C2, _C3 = np.uint64(0xCC9E2D51), np.uint64(0x1B873593), np.uint64(0xE6546B64)
_F1, _F2 = np.uint64(0x85EBCA6B), np.uint64(0xC2B2AE35)
_S5, _S8, _S13, _S15, _S16, _S17, _S19, _S24 = (np.uint64(n) for n in (5, 8, 13, 15, 16, 17, 19, 24))


@_jit([types.uint64(types.uint64)])
def mix_k(k: np.uint64) -> np.uint64:
    """k1 *= c1; k1 = rotl32(k1, 15); k1 *= c2 (32-bit)."""
    k = (k * _C1) & MASK32
    k = ((k << _S15) | (k >> _S17)) & MASK32
    return (k * _C2) & MASK32


@_jit([types.int32(u8_1d, types.int64, types.int64)])
def murmurhash3_32(data: np.ndarray, start: int, stop: int) -> np.int32:
    """MurmurHash3_x86_32 (seed 0) of data[start:stop] as a signed int, as sklearn's murmurhash3_32."""
    h = np.uint64(0)
    length = stop - start
    nblocks = length // 4
    for b in range(nblocks):
        p = start + 4 * b
        k = (np.uint64(data[p]) | (np.uint64(data[p + 1]) << _S8) | (np.uint64(data[p + 2]) << _S16)
             | (np.uint64(data[p + 3]) << _S24))
        h ^= mix_k(k)
        h = ((h << _S13) | (h >> _S19)) & MASK32
        h = (h * _S5 + _C3) & MASK32
    tail = start + nblocks * 4
    rest = length & 3
    k = np.uint64(0)
    if rest == 3:
        k ^= np.uint64(data[tail + 2]) << _S16
    if rest >= 2:
        k ^= np.uint64(data[tail + 1]) << _S8
    if rest >= 1:
        k ^= np.uint64(data[tail])
        h ^= mix_k(k)
    h ^= np.uint64(length) & MASK32
    h ^= h >> _S16
    h = (h * _F1) & MASK32
    h ^= h >> _S13
    h = (h * _F2) & MASK32
    h ^= h >> _S16
    signed = np.int64(h)
    return np.int32(signed - 4294967296 if signed >= 2147483648 else signed)


def _hash_packed(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray, n_features: int,
                 alternate_sign: bool, out: np.ndarray) -> None:
    for i in prange(out.shape[0]):
        for t in range(row_ptr[i], row_ptr[i + 1]):
            h = np.int64(murmurhash3_32(data, starts[t], ends[t]))
            # abs(INT32_MIN) overflows in int32; scikit-learn defines its index this way.
            index = (2147483647 - (n_features - 1)) % n_features if h == -2147483648 else abs(h) % n_features
            out[i, index] += (1 if h >= 0 else -1) if alternate_sign else 1


hash_packed = _jit([types.void(u8_1d, i64_1d, i64_1d, i64_1d, types.int64, types.boolean, types.Array(y, 2, "C"))
                    for y in REALS], parallel=True)(_hash_packed)
