"""Routing by calibrated confidence: the measures, one stage's answer-or-escalate decision, a planned cascade.

The server routes live, one stage at a time, with `route_stage`; tuning and the tests plan whole cascades
offline with `plan_cascade`, which is built from the same decision so that the two agree row for row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import BoolArray, FloatArray, IndexArray, as_probabilities, check_same_rows, is_number
from infergate.cascade.errors import CascadeError

Measure = Literal["max_prob", "margin", "entropy"]


def max_prob(probabilities: FloatArray) -> FloatArray:
    """The top class's probability, in [1 / classes, 1]."""
    return probabilities.max(axis=1)  # type: ignore[no-any-return]


def margin(probabilities: FloatArray) -> FloatArray:
    """Top-1 minus top-2 probability, in [0, 1]: 0 when the two leading classes tie."""
    top_two = np.partition(probabilities, -2, axis=1)[:, -2:]
    return top_two[:, 1] - top_two[:, 0]  # type: ignore[no-any-return]


def entropy(probabilities: FloatArray) -> FloatArray:
    """1 - entropy / log(classes), in [0, 1]: 1 for a one-hot row, 0 for a uniform one."""
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 is taken as 0 below
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    normalised = -terms.sum(axis=1) / math.log(probabilities.shape[1])
    return np.clip(1.0 - normalised, 0.0, 1.0)  # type: ignore[no-any-return]  # rounding may leave [0, 1]


# Higher always means more confident, so every measure is compared with its threshold by >=.
MEASURES: dict[str, Callable[[FloatArray], FloatArray]] = {"max_prob": max_prob, "margin": margin, "entropy": entropy}


@dataclass(frozen=True, slots=True)
class StageRouting:
    """What one stage does with the rows it was given."""

    is_answered: BoolArray  # per row: True = this stage answers it, False = it goes to the next stage
    confidence: FloatArray  # per row: the calibrated confidence that was compared with the threshold

    @property
    def answered_rows(self) -> IndexArray:
        return np.flatnonzero(self.is_answered)

    @property
    def escalated_rows(self) -> IndexArray:
        return np.flatnonzero(~self.is_answered)


@dataclass(frozen=True, slots=True)
class CascadePlan:
    """Which stage answers each row of a cascade, and the answer."""

    stage: IndexArray  # per row: index of the stage that answers it
    confidence: FloatArray  # per row: that stage's confidence
    probabilities: FloatArray  # per row: that stage's calibrated probabilities (rows, classes)

    @property
    def predictions(self) -> IndexArray:
        """Per row: the class the answering stage chose."""
        return self.probabilities.argmax(axis=1)  # type: ignore[no-any-return]

    def answered_fraction(self, n_stages: int) -> tuple[float, ...]:
        """Per stage: the fraction of rows it answers (all zeros for no rows)."""
        counts = np.bincount(self.stage, minlength=n_stages)
        return tuple(float(c) / max(len(self.stage), 1) for c in counts)


def confidence(probabilities: npt.ArrayLike, measure: Measure) -> FloatArray:
    """Per row of calibrated `probabilities`: the confidence under `measure`, higher = more confident."""
    return _measure(measure)(as_probabilities("probabilities", probabilities))


def route_stage(probabilities: npt.ArrayLike, threshold: float, measure: Measure) -> StageRouting:
    """One stage's decision: it answers the rows whose confidence >= threshold; the rest are escalated.

    A threshold of 0 answers every row; one above 1 answers none.
    """
    return _route(as_probabilities("probabilities", probabilities), _checked_threshold("threshold", threshold),
                  _measure(measure))


def route_checked(probabilities: FloatArray, threshold: float, measure: Measure) -> StageRouting:
    """route_stage without its checks, for the server: `probabilities` come from calibrated_probabilities
    (finite rows of a fixed width) and the threshold from a validated cascade.json."""
    return _route(probabilities, threshold, MEASURES[measure])


def plan_cascade(stage_probabilities: Sequence[npt.ArrayLike], thresholds: Sequence[float],
                 measure: Measure) -> CascadePlan:
    """Routes every row through the stages as the server would: stage i answers the rows that no earlier stage
    answered and whose confidence >= thresholds[i]; the last stage answers every row left.

    `stage_probabilities[i]` holds stage i's calibrated probabilities for all rows (rows, classes);
    `thresholds` has one value per stage but the last.
    """
    arrays = [as_probabilities(f"stage_probabilities[{i}]", p) for i, p in enumerate(stage_probabilities)]
    if len(arrays) < 2:
        raise CascadeError(f"stage_probabilities has {len(arrays)} stage(s), expected at least 2")
    if len(thresholds) != len(arrays) - 1:
        raise CascadeError(f"thresholds has {len(thresholds)} value(s), expected {len(arrays) - 1} "
                           "(one per stage but the last)")
    check_same_rows({f"stage_probabilities[{i}]": p.shape[0] for i, p in enumerate(arrays)})
    widths = {p.shape[1] for p in arrays}
    if len(widths) != 1:
        raise CascadeError(f"stage_probabilities have {[p.shape[1] for p in arrays]} classes, expected one width")
    checked = [_checked_threshold(f"thresholds[{i}]", t) for i, t in enumerate(thresholds)]
    return plan_checked(arrays, checked, measure)


def plan_checked(arrays: Sequence[FloatArray], thresholds: Sequence[float], measure: Measure) -> CascadePlan:
    """plan_cascade without its checks, for callers that plan many times over arrays from as_probabilities.

    The live decision (route_stage's) applied stage by stage to the rows still unanswered.
    """
    row_measure = _measure(measure)
    last = len(arrays) - 1
    n_rows = arrays[0].shape[0]
    stage = np.full(n_rows, last, dtype=np.intp)
    row_confidence = np.empty(n_rows, dtype=np.float64)
    remaining = np.arange(n_rows)
    for index, threshold in enumerate(thresholds):
        routing = _route(arrays[index][remaining], threshold, row_measure)
        answered = remaining[routing.is_answered]
        stage[answered] = index
        row_confidence[answered] = routing.confidence[routing.is_answered]
        remaining = remaining[~routing.is_answered]
    row_confidence[remaining] = row_measure(arrays[last][remaining])
    probabilities = arrays[last].copy()
    for index in range(last):
        is_here = stage == index
        probabilities[is_here] = arrays[index][is_here]
    return CascadePlan(stage, row_confidence, probabilities)


def _route(probabilities: FloatArray, threshold: float, measure: Callable[[FloatArray], FloatArray]) -> StageRouting:
    row_confidence = measure(probabilities)
    return StageRouting(row_confidence >= threshold, row_confidence)


def _measure(name: str) -> Callable[[FloatArray], FloatArray]:
    if not isinstance(name, str) or name not in MEASURES:
        raise CascadeError(f"measure is {name!r}, expected one of {list(MEASURES)}")
    return MEASURES[name]


def _checked_threshold(name: str, threshold: float) -> float:
    """Any real number but NaN: below 0 answers all, above 1 (inf included) answers none."""
    if not is_number(threshold) or math.isnan(threshold):
        raise CascadeError(f"{name} is {threshold!r}, expected a number (0 answers every row, above 1 none)")
    return float(threshold)
