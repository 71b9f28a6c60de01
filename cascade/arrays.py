"""The arrays the cascade takes, checked and converted: scores (logits or probabilities) and class labels."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from infergate.cascade.errors import CascadeError

ScoreKind = Literal["logits", "probabilities"]  # what a model output holds, per row and class
SCORE_KINDS: tuple[ScoreKind, ...] = ("logits", "probabilities")
# |row sum - 1| allowed in a probability row: float32 softmax over thousands of classes stays far inside it,
# while a row of logits or of unnormalised scores mistaken for probabilities does not.
PROBABILITY_SUM_TOLERANCE = 1e-3
# Probabilities are clipped to this before the log: a 0 (float32 underflow) would make the NLL infinite.
PROBABILITY_FLOOR = 1e-12

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


def as_scores(name: str, scores: npt.ArrayLike, kind: ScoreKind) -> FloatArray:
    """Returns `scores` as a float64 (rows, classes) array, or raises CascadeError naming `name`.

    Every value must be finite, there must be at least 2 classes, and when `kind` is "probabilities"
    every row must be a probability vector (no negative value, summing to 1 within tolerance).
    """
    if kind not in SCORE_KINDS:
        raise CascadeError(f"{name}: kind is {kind!r}, expected one of {list(SCORE_KINDS)}")
    array = _float_array(name, scores)
    if array.ndim != 2:
        raise CascadeError(f"{name} has shape {array.shape}, expected 2-D (rows, classes)")
    if array.shape[1] < 2:
        raise CascadeError(f"{name} has {array.shape[1]} class column(s), expected at least 2")
    _check_finite(name, array)
    if kind == "probabilities":
        _check_probability_rows(name, array)
    return array


def as_probabilities(name: str, probabilities: npt.ArrayLike) -> FloatArray:
    """as_scores for arrays that must be probability rows."""
    return as_scores(name, probabilities, "probabilities")


def as_labels(name: str, labels: npt.ArrayLike, n_rows: int | None = None, n_classes: int | None = None) -> IndexArray:
    """Returns `labels` as a 1-D intp array of class indices in [0, n_classes), or raises CascadeError.

    Floats are accepted when they hold whole numbers (labels read back from CSV); booleans are not.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise CascadeError(f"{name} has shape {array.shape}, expected 1-D (rows,) class indices")
    if n_rows is not None and array.shape[0] != n_rows:
        raise CascadeError(f"{name} has {array.shape[0]} rows, expected {n_rows} like the scores")
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if bad.size:
            row = int(bad[0])
            raise CascadeError(f"{name} has {_show(array[row])} at row {row}, expected integer class indices")
    elif array.dtype.kind not in "iu":
        raise CascadeError(f"{name} has dtype {array.dtype}, expected integer class indices")
    too_high = array >= n_classes if n_classes is not None else np.zeros(array.shape, dtype=bool)
    bad = np.flatnonzero((array < 0) | too_high)
    if bad.size:
        row = int(bad[0])
        expected = f"in [0, {n_classes})" if n_classes is not None else ">= 0"
        raise CascadeError(f"{name} has {_show(array[row])} at row {row}, expected class indices {expected}")
    return array.astype(np.intp)


def check_same_rows(named_rows: dict[str, int]) -> int:
    """Returns the common row count of the named arrays, or raises CascadeError naming the one that differs."""
    (first, rows), *others = named_rows.items()
    for name, count in others:
        if count != rows:
            raise CascadeError(f"{name} has {count} rows, expected {rows} like {first}")
    return rows


def is_number(value: object) -> bool:
    """A real number as JSON or a caller gives it: int or float (NumPy's included), not bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def log_scores(scores: FloatArray, kind: ScoreKind) -> FloatArray:
    """Log-domain scores: logits as they are, probabilities clipped to PROBABILITY_FLOOR and logged.

    softmax(log p / T) = p^(1/T) / sum(p^(1/T)), so temperature scaling applies to either kind.
    """
    if kind == "logits":
        return scores
    return np.log(np.clip(scores, PROBABILITY_FLOOR, 1.0))


def softmax(scores: FloatArray) -> FloatArray:
    """Row-wise softmax, shifted by the row maximum so that no exp overflows."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _float_array(name: str, values: npt.ArrayLike) -> FloatArray:
    raw = np.asarray(values)
    if raw.dtype.kind not in "biuf":
        raise CascadeError(f"{name} has dtype {raw.dtype}, expected numbers")
    return np.ascontiguousarray(raw, dtype=np.float64)


def _check_finite(name: str, array: FloatArray) -> None:
    if np.isfinite(array).all():  # the common case, and the serving path's: one pass, no index array
        return
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise CascadeError(f"{name} has {len(bad)} NaN or infinite value(s), the first {_show(array[row, column])} "
                           f"at row {row}, column {column}; expected finite numbers")


def _check_probability_rows(name: str, array: FloatArray) -> None:
    if not array.size:
        return
    if array.min() < 0:
        negative = np.argwhere(array < 0)
        row, column = (int(i) for i in negative[0])
        raise CascadeError(f"{name} has {_show(array[row, column])} at row {row}, column {column}; "
                           "expected probabilities >= 0")
    sums = array.sum(axis=1)
    if np.abs(sums - 1.0).max() > PROBABILITY_SUM_TOLERANCE:
        row = int(np.flatnonzero(np.abs(sums - 1.0) > PROBABILITY_SUM_TOLERANCE)[0])
        raise CascadeError(f"{name} row {row} sums to {_show(sums[row])}, expected 1 within "
                           f"{PROBABILITY_SUM_TOLERANCE} (probabilities; are these logits?)")


def _show(value: Any) -> str:
    """A value for a message: plain Python repr, without NumPy's np.float64(...) wrapper."""
    return repr(value.item() if isinstance(value, np.generic) else value)
