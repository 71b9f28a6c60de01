"""Threshold tuning: sweep each non-final stage's threshold over the confidences it sees, and pick the cheapest
cascade whose accuracy stays within a given drop of the last stage alone."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import (
    BoolArray,
    FloatArray,
    IndexArray,
    as_labels,
    as_probabilities,
    check_same_rows,
    is_number,
)
from infergate.cascade.errors import CascadeError
from infergate.cascade.routing import MEASURES, Measure, plan_checked

logger = logging.getLogger(__name__)

NEVER = math.inf  # a threshold no confidence reaches: that stage answers no row and every row goes on
# Slack on the accuracy drop for float rounding: 5 wrong rows more in 1000 must meet a limit of 0.005.
ACCURACY_SLACK = 1e-12
# Relative slack on cost: the same rows priced by two summation orders must not count as a saving.
COST_SLACK = 1e-12
# Rounds of the coordinate sweep for 3+ stages. A round that changes anything lowers the cost (or keeps it
# and raises accuracy), so the sweep cannot cycle; this bounds it at MAX_ROUNDS * (stages - 1) sweeps.
MAX_ROUNDS = 20


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """One setting of a cascade's thresholds and what it does on the tuning rows."""

    thresholds: tuple[float, ...]  # one per non-final stage; inf = that stage answers no row
    accuracy: float  # fraction of rows the cascade answers right
    cost_per_row_usd: float  # mean over rows of the cost of every stage the row reaches
    answered_fraction: tuple[float, ...]  # per stage: the fraction of rows it answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AccuracyCostCurve:
    """Every point the sweep evaluated, cheapest first: what the accuracy-cost plot draws."""

    thresholds: FloatArray  # (points, stages - 1)
    accuracy: FloatArray  # (points,)
    cost_per_row_usd: FloatArray  # (points,)


@dataclass(frozen=True, slots=True)
class TuningResult:
    """The chosen thresholds, the reference they were held to, and the curve they were chosen from."""

    measure: Measure
    max_accuracy_drop: float  # absolute: the chosen accuracy is at least reference_accuracy minus this
    reference_accuracy: float  # the last stage alone, on every row
    reference_cost_per_row_usd: float  # the last stage alone: its cost per inference
    chosen: OperatingPoint  # the cheapest point found within the drop
    curve: AccuracyCostCurve

    @property
    def saving_fraction(self) -> float | None:
        """Cost saved against the last stage alone (negative: the cascade costs more); None if that is free."""
        if self.reference_cost_per_row_usd <= 0:
            return None
        return 1.0 - self.chosen.cost_per_row_usd / self.reference_cost_per_row_usd

    def to_dict(self) -> dict[str, Any]:
        """The result without the curve, for a JSON report (thresholds of inf become null)."""
        chosen = self.chosen.to_dict()
        chosen["thresholds"] = [None if math.isinf(t) else t for t in self.chosen.thresholds]
        return {"measure": self.measure, "max_accuracy_drop": self.max_accuracy_drop,
                "reference_accuracy": self.reference_accuracy,
                "reference_cost_per_row_usd": self.reference_cost_per_row_usd,
                "saving_fraction": self.saving_fraction, "chosen": chosen, "curve_points": len(self.curve.accuracy)}


@dataclass(frozen=True, slots=True)
class _Problem:
    """Checked tuning inputs and what every sweep reuses."""

    stages: list[FloatArray]  # per stage: calibrated probabilities (rows, classes)
    is_right: BoolArray  # (stages, rows): would this stage answer this row right?
    cumulative_cost_usd: FloatArray  # (stages,): what a row answered at stage i paid, all stages <= i
    measure: Measure

    @property
    def n_rows(self) -> int:
        return int(self.is_right.shape[1])


def tune_thresholds(stage_probabilities: Sequence[npt.ArrayLike], labels: npt.ArrayLike,
                    cost_per_inference_usd: Sequence[float], max_accuracy_drop: float,
                    measure: Measure = "max_prob") -> TuningResult:
    """Picks the cheapest thresholds whose cascade accuracy is within `max_accuracy_drop` of the last stage alone.

    `stage_probabilities[i]` are stage i's calibrated probabilities on the tuning rows. Each threshold is
    swept exactly over the distinct confidences of the rows that reach its stage (one sort: O(n log n)), with
    the other thresholds held. Two stages take one sweep, which is exact. More stages take coordinate
    rounds from "every row to the last stage", each keeping the cheapest point within the drop: a local
    optimum, found in at most MAX_ROUNDS rounds.
    """
    problem = _problem(stage_probabilities, labels, cost_per_inference_usd, measure)
    if not (is_number(max_accuracy_drop) and 0.0 <= max_accuracy_drop <= 1.0):
        raise CascadeError(f"max_accuracy_drop is {max_accuracy_drop!r}, expected a number in [0, 1]")
    reference_right = int(problem.is_right[-1].sum())
    lowest_right = reference_right - (max_accuracy_drop + ACCURACY_SLACK) * problem.n_rows
    n_free = len(problem.stages) - 1
    thresholds = [NEVER] * n_free  # every row to the last stage: the reference accuracy, so within the drop
    right, cost = reference_right, float(problem.cumulative_cost_usd[-1]) * problem.n_rows
    curves: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    for round_index in range(MAX_ROUNDS):
        is_changed = False
        for stage in range(n_free):
            candidates, candidate_right, candidate_cost = _sweep(problem, thresholds, stage)
            points = np.tile(np.asarray(thresholds), (len(candidates), 1))
            points[:, stage] = candidates
            curves.append((points, candidate_right / problem.n_rows, candidate_cost / problem.n_rows))
            best = _cheapest_within(candidates, candidate_right, candidate_cost, lowest_right)
            if _is_better(float(candidate_cost[best]), int(candidate_right[best]), cost, right):
                thresholds[stage] = float(candidates[best])
                right, cost = int(candidate_right[best]), float(candidate_cost[best])
                is_changed = True
        logger.debug("tuning round %d: thresholds %s, accuracy %.6f", round_index, thresholds, right / problem.n_rows)
        if not is_changed or n_free == 1:  # one sweep of one threshold already covered every choice
            break
    chosen = _operating_point(problem, thresholds)
    return TuningResult(measure, float(max_accuracy_drop), reference_right / problem.n_rows,
                        float(cost_per_inference_usd[-1]), chosen, _curve(curves))


def evaluate_thresholds(stage_probabilities: Sequence[npt.ArrayLike], labels: npt.ArrayLike,
                        cost_per_inference_usd: Sequence[float], thresholds: Sequence[float],
                        measure: Measure = "max_prob") -> OperatingPoint:
    """What given thresholds do on other rows, e.g. tuned thresholds on a held-out evaluation split."""
    problem = _problem(stage_probabilities, labels, cost_per_inference_usd, measure)
    if len(thresholds) != len(problem.stages) - 1:
        raise CascadeError(f"thresholds has {len(thresholds)} value(s), expected {len(problem.stages) - 1} "
                           "(one per stage but the last)")
    for index, threshold in enumerate(thresholds):
        if not is_number(threshold) or math.isnan(threshold):
            raise CascadeError(f"thresholds[{index}] is {threshold!r}, expected a number")
    return _operating_point(problem, [float(t) for t in thresholds])


def _problem(stage_probabilities: Sequence[npt.ArrayLike], labels: npt.ArrayLike,
             cost_per_inference_usd: Sequence[float], measure: Measure) -> _Problem:
    stages = [as_probabilities(f"stage_probabilities[{i}]", p) for i, p in enumerate(stage_probabilities)]
    if len(stages) < 2:
        raise CascadeError(f"stage_probabilities has {len(stages)} stage(s), expected at least 2")
    n_rows = check_same_rows({f"stage_probabilities[{i}]": p.shape[0] for i, p in enumerate(stages)})
    if n_rows == 0:
        raise CascadeError("stage_probabilities[0] has 0 rows, expected at least 1")
    for index, p in enumerate(stages):
        if p.shape[1] != stages[0].shape[1]:
            raise CascadeError(f"stage_probabilities[{index}] has {p.shape[1]} classes, "
                               f"expected {stages[0].shape[1]} like stage_probabilities[0]")
    y = as_labels("labels", labels, n_rows=n_rows, n_classes=stages[0].shape[1])
    if len(cost_per_inference_usd) != len(stages):
        raise CascadeError(f"cost_per_inference_usd has {len(cost_per_inference_usd)} value(s), "
                           f"expected {len(stages)} (one per stage)")
    for index, cost in enumerate(cost_per_inference_usd):
        if not (is_number(cost) and math.isfinite(cost) and cost >= 0):
            raise CascadeError(f"cost_per_inference_usd[{index}] is {cost!r}, expected a finite number >= 0")
    if not isinstance(measure, str) or measure not in MEASURES:
        raise CascadeError(f"measure is {measure!r}, expected one of {list(MEASURES)}")
    is_right = np.stack([p.argmax(axis=1) == y for p in stages])
    cumulative = np.cumsum(np.asarray(cost_per_inference_usd, dtype=np.float64))
    return _Problem(stages, is_right, cumulative, measure)


def _sweep(problem: _Problem, thresholds: Sequence[float], stage: int) -> tuple[FloatArray, IndexArray, FloatArray]:
    """Every distinct choice of one stage's threshold, the others held: (thresholds, rows right, total cost).

    A row's path after `stage` depends only on its own confidences there, so with `stage` skipped each row
    that reaches it has a fixed outcome downstream; answering the k most confident of them instead is then
    a matter of prefix sums over those rows sorted by confidence.
    """
    skipped = list(thresholds)
    skipped[stage] = NEVER
    answering = plan_checked(problem.stages, skipped, problem.measure).stage
    rows = np.arange(problem.n_rows)
    is_right = problem.is_right[answering, rows]
    cost = problem.cumulative_cost_usd[answering]
    reaches = answering > stage  # with `stage` skipped, exactly the rows that reach it pass it
    fixed_right, fixed_cost = int(is_right[~reaches].sum()), float(cost[~reaches].sum())
    reaching = np.flatnonzero(reaches)
    row_confidence = MEASURES[problem.measure](problem.stages[stage][reaching])
    order = np.argsort(-row_confidence, kind="stable")
    ranked = row_confidence[order]
    here_right = _prefix_sums(problem.is_right[stage, reaching][order])
    down_right = _prefix_sums(is_right[reaching][order])
    down_cost = _prefix_sums(cost[reaching][order])
    # Answering the k most confident rows is a threshold only where the k-th confidence differs from the next.
    ends = np.flatnonzero(ranked[:-1] != ranked[1:]) + 1
    counts = np.concatenate(([0], ends, [len(ranked)])) if len(ranked) else np.zeros(1, dtype=np.intp)
    candidates = np.concatenate(([NEVER], ranked[counts[1:] - 1]))
    right = fixed_right + here_right[counts] + down_right[-1] - down_right[counts]
    total_cost = fixed_cost + counts * problem.cumulative_cost_usd[stage] + down_cost[-1] - down_cost[counts]
    return candidates, right.astype(np.intp), total_cost.astype(np.float64)


def _cheapest_within(candidates: FloatArray, right: IndexArray, cost: FloatArray, lowest_right: float) -> int:
    """Index of the cheapest candidate right on at least `lowest_right` rows; ties to the more accurate.

    There is always one: the held thresholds are within the drop, and their point is among the candidates
    (the rows the held threshold answers are the most confident ones, a prefix of the sweep).
    """
    order = np.lexsort((-candidates, -right, cost))  # by cost, then more rows right, then the higher threshold
    return int(order[right[order] >= lowest_right][0])


def _is_better(cost: float, right: int, current_cost: float, current_right: int) -> bool:
    slack = COST_SLACK * max(abs(current_cost), 1.0)
    return cost < current_cost - slack or (abs(cost - current_cost) <= slack and right > current_right)


def _operating_point(problem: _Problem, thresholds: Sequence[float]) -> OperatingPoint:
    plan = plan_checked(problem.stages, thresholds, problem.measure)
    is_right = problem.is_right[plan.stage, np.arange(problem.n_rows)]
    return OperatingPoint(tuple(thresholds), float(is_right.mean()),
                          float(problem.cumulative_cost_usd[plan.stage].mean()),
                          plan.answered_fraction(len(problem.stages)))


def _curve(curves: list[tuple[FloatArray, FloatArray, FloatArray]]) -> AccuracyCostCurve:
    """The sweeps' points without repeats (a later round re-evaluates earlier points), cheapest first."""
    thresholds = np.concatenate([c[0] for c in curves])
    accuracy = np.concatenate([c[1] for c in curves])
    cost = np.concatenate([c[2] for c in curves])
    _, first = np.unique(thresholds, axis=0, return_index=True)
    keep = first[np.lexsort((-accuracy[first], cost[first]))]
    return AccuracyCostCurve(thresholds[keep], accuracy[keep], cost[keep])


def _prefix_sums(values: npt.NDArray[Any]) -> FloatArray:
    """[0, v0, v0 + v1, ...]: the sum of the first k values at index k."""
    return np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
