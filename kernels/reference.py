"""NumPy reference backend: runs a Program column by column over the whole batch; the semantics all backends match."""

import logging

import numpy as np

from .program import (
    AFFINE_BLOCKS,
    K_AFFINE,
    K_AFFINE_DIV,
    K_BUCKETIZE,
    K_COPY,
    K_LOG1P,
    K_ONEHOT,
    OP_AUX,
    OP_COUNT,
    OP_FLAG,
    OP_HI,
    OP_IOFF,
    OP_KIND,
    OP_LO,
    OP_POFF,
    STATUS_INPUT_INF,
    STATUS_OK,
    STATUS_OUTPUT_NONFINITE,
    STATUS_UNKNOWN_CATEGORY,
    Program,
)

logger = logging.getLogger(__name__)

Status = tuple[int, int, int, float]  # code, row, column, value of the first failing row; code 0 if none


def _bucketize(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    out = np.searchsorted(edges, values, side="right").astype(np.float64)
    # searchsorted sorts NaN last; the kernels keep NaN so the output check can reject it.
    out[np.isnan(values)] = np.nan
    return out


def _onehot(buf: np.ndarray, program: Program, record: np.ndarray) -> np.ndarray:
    """Fill the destination slots; returns the mask of rows whose value is not a category."""
    values = buf[:, record[OP_AUX]]
    cats = program.fparams[record[OP_POFF]:record[OP_POFF] + record[OP_COUNT]]
    dests = program.iparams[record[OP_IOFF]:record[OP_IOFF] + record[OP_COUNT]]
    for cat, dest in zip(cats, dests):
        if dest >= 0:
            buf[:, dest] = values == cat
    return ~np.isin(values, cats)


def _run_record(buf: np.ndarray, program: Program, record: np.ndarray) -> np.ndarray | None:
    kind, lo, hi, poff = (int(record[OP_KIND]), int(record[OP_LO]), int(record[OP_HI]), int(record[OP_POFF]))
    width = hi - lo
    cols = buf[:, lo:hi]
    if kind in (K_AFFINE, K_AFFINE_DIV):
        block = program.fparams[poff:poff + AFFINE_BLOCKS * width]
        fill, sub, mul, add, low, high = block.reshape(AFFINE_BLOCKS, width)
        np.copyto(cols, np.broadcast_to(fill, cols.shape), where=np.isnan(cols))
        cols -= sub
        if kind == K_AFFINE_DIV:
            cols /= mul  # the mul block holds divisors
        else:
            cols *= mul
        cols += add
        np.clip(cols, low, high, out=cols)
    elif kind == K_LOG1P:
        np.log1p(cols, out=cols)
    elif kind == K_BUCKETIZE:
        ptr = program.iparams[record[OP_IOFF]:record[OP_IOFF] + width + 1]
        for t in range(width):
            cols[:, t] = _bucketize(cols[:, t], program.fparams[ptr[t]:ptr[t + 1]])
    elif kind == K_ONEHOT:
        unknown = _onehot(buf, program, record)
        return None if record[OP_FLAG] else unknown
    elif kind == K_COPY:
        buf[:, lo] = buf[:, record[OP_AUX]]
    return None


def run_program(program: Program, X: np.ndarray, out: np.ndarray) -> Status:
    """Write the transform of X (n, n_features_in) into out (n, n_out); return the first failing row's status.

    The status is the one a row-at-a-time kernel reports: the lowest failing row, and within it the
    first infinite input column, else the first failing one-hot record, else the first non-finite output.
    """
    n = X.shape[0]
    buf = np.zeros((n, program.n_slots), dtype=np.float64)
    gathered = X[:, program.gather_col]
    buf[:, program.gather_slot] = gathered
    failures: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (code, row mask, column of row, value)
    bad_in = np.isinf(gathered)
    if bad_in.any():
        first = bad_in.argmax(axis=1)
        failures.append((STATUS_INPUT_INF, bad_in.any(axis=1), program.gather_col[first],
                         gathered[np.arange(n), first]))
    with np.errstate(all="ignore"):
        for index, record in enumerate(program.ops):
            values_before = buf[:, record[OP_AUX]].copy() if record[OP_KIND] == K_ONEHOT else None
            unknown = _run_record(buf, program, record)
            # Only one-hot records report unknowns, so values_before is set whenever unknown is.
            if unknown is not None and values_before is not None and unknown.any():
                failures.append((STATUS_UNKNOWN_CATEGORY, unknown, np.full(n, index), values_before))
        out[...] = buf[:, :program.n_out]
    bad_out = ~np.isfinite(out)
    if bad_out.any():
        first = bad_out.argmax(axis=1)
        failures.append((STATUS_OUTPUT_NONFINITE, bad_out.any(axis=1), first, out[np.arange(n), first]))
    return _first_failure(failures)


def _first_failure(failures: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Status:
    if not failures:
        return (STATUS_OK, 0, 0, 0.0)
    rows = [int(mask.argmax()) for _, mask, _, _ in failures]
    row = min(rows)
    # Failures were appended in the order a kernel checks them within a row, so the first one at `row` wins.
    for (code, _mask, column, value), first_row in zip(failures, rows):
        if first_row == row:
            return (code, row, int(column[row]), float(value[row]))
    raise AssertionError("unreachable")


class NumpyBackend:
    """The reference as a backend: always available, whole-batch NumPy, one column at a time."""

    name = "numpy"

    def compile(self, program: Program) -> Program:
        return program

    def run(self, handle: Program, X: np.ndarray, out: np.ndarray, n_threads: int) -> Status:
        return run_program(handle, X, out)

    def hash_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                    n_features: int, alternate_sign: bool, out: np.ndarray, n_threads: int) -> None:
        from .hashing import hash_packed_reference

        hash_packed_reference(data, starts, ends, row_ptr, n_features, alternate_sign, out)
