"""Which model output a stage routes on, and whether it holds logits or probabilities: chosen, checked, detected."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import PROBABILITY_SUM_TOLERANCE, SCORE_KINDS, ScoreKind
from infergate.cascade.errors import CascadeError
from infergate.cascade.model_config import TensorLike

LOGITS_HINT = "logit"  # an output whose name holds this (any case) is taken for logits


def score_width(model: str, tensor: TensorLike) -> int:
    """The classes of an output that can be calibrated (FP32 [classes], classes >= 2), or CascadeError."""
    dims = tuple(tensor.dims)
    if tensor.datatype != "FP32" or len(dims) != 1 or dims[0] < 2:
        raise CascadeError(f"model {model!r} output {tensor.name!r} is {tensor.datatype} {list(dims)}, expected "
                           "FP32 [classes] with at least 2 classes (a vector of logits or probabilities)")
    return dims[0]


def choose_output(model: str, outputs: Sequence[TensorLike], requested: str | None,
                  scores_of: Callable[[str], npt.NDArray[Any]]) -> str:
    """The output to calibrate: `requested`, else the only candidate (FP32 [classes >= 2]), else the one named
    like logits, else the one whose rows are probabilities; `scores_of(name)` predicts an output's scores."""
    by_name = {t.name: t for t in outputs}
    if requested is not None:
        if requested not in by_name:
            raise CascadeError(f"--output {requested!r} is not an output of model {model!r}, expected one of "
                               f"{list(by_name)}")
        score_width(model, by_name[requested])
        return requested
    candidates = [t.name for t in outputs if _is_scores(t)]
    if len(candidates) == 1:
        return candidates[0]
    named = [name for name in candidates if LOGITS_HINT in name.lower()]
    if len(named) == 1:
        return named[0]
    probable = [name for name in candidates if _is_probability_rows(scores_of(name))]
    if not named and len(probable) == 1:
        return probable[0]
    shown = ", ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in outputs)
    raise CascadeError(f"model {model!r}: cannot tell which output to calibrate among {shown}; expected one FP32 "
                       f"[classes] output named like '{LOGITS_HINT}' or one of probability rows: pass --output NAME")


def detect_kind(scores: npt.ArrayLike, requested: str | None = None) -> ScoreKind:
    """`requested` when given; else probabilities when every row is >= 0 and sums to 1, else logits."""
    if requested is not None:
        if requested not in SCORE_KINDS:
            raise CascadeError(f"--output-kind is {requested!r}, expected one of {list(SCORE_KINDS)}")
        return "logits" if requested == "logits" else "probabilities"
    return "probabilities" if _is_probability_rows(np.asarray(scores)) else "logits"


def _is_scores(tensor: TensorLike) -> bool:
    return tensor.datatype == "FP32" and len(tuple(tensor.dims)) == 1 and tuple(tensor.dims)[0] >= 2


def _is_probability_rows(scores: npt.NDArray[Any]) -> bool:
    values = np.asarray(scores, dtype=np.float64)
    return bool(values.ndim == 2 and np.all(values >= 0)
                and np.all(np.abs(values.sum(axis=1) - 1.0) <= PROBABILITY_SUM_TOLERANCE))
