"""Threshold tuning: the cheapest point within the drop on an example with a known answer, and never outside it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cascade_cases import labelled_logits

from infergate.cascade.arrays import softmax
from infergate.cascade.routing import plan_cascade
from infergate.cascade.tuning import evaluate_thresholds, tune_thresholds

# Stage 0 predicts class 0 on every row, with confidences falling row by row; it is right on rows 0-4 and 6.
SMALL_CONFIDENCE = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.52]
LABELS = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
SMALL = np.array([[c, 1.0 - c] for c in SMALL_CONFIDENCE])
LARGE = np.eye(2)[LABELS] * 0.8 + 0.1  # stage 1 is right on every row
COSTS = [1.0, 10.0]
# Stage 0 answering its k most confident rows: wrong on 0 of them for k <= 5, 1 for k = 6, 7, then 2, 3, 4;
# every row pays 1 and the 10 - k escalated ones 10 more: cost per row 11 - k, accuracy 1 - wrong / 10.


@pytest.mark.parametrize(("drop", "threshold", "accuracy", "cost"),
                         [(0.0, 0.75, 1.0, 6.0), (0.1, 0.65, 0.9, 4.0), (0.15, 0.65, 0.9, 4.0),
                          (0.2, 0.6, 0.8, 3.0), (1.0, 0.52, 0.6, 1.0)])
def test_picks_the_cheapest_thresholds_within_the_drop(drop: float, threshold: float, accuracy: float,
                                                      cost: float) -> None:
    result = tune_thresholds([SMALL, LARGE], LABELS, COSTS, drop)
    assert result.chosen.thresholds == (threshold,)
    assert result.chosen.accuracy == pytest.approx(accuracy)
    assert result.chosen.cost_per_row_usd == pytest.approx(cost)
    assert (result.reference_accuracy, result.reference_cost_per_row_usd) == (1.0, 10.0)
    assert result.saving_fraction == pytest.approx(1.0 - cost / 10.0)
    answered = sum(c >= threshold for c in SMALL_CONFIDENCE) / 10
    assert result.chosen.answered_fraction == pytest.approx((answered, 1.0 - answered))


def test_the_curve_holds_every_distinct_threshold_cheapest_first() -> None:
    result = tune_thresholds([SMALL, LARGE], LABELS, COSTS, 0.0)
    curve = result.curve
    assert curve.thresholds[:, 0].tolist() == SMALL_CONFIDENCE[::-1] + [math.inf]
    assert curve.cost_per_row_usd.tolist() == pytest.approx([1.0 + k for k in range(11)])
    assert curve.accuracy.tolist() == pytest.approx([0.6, 0.7, 0.8, 0.9, 0.9, 1, 1, 1, 1, 1, 1])


def test_equal_confidences_are_one_threshold() -> None:
    small = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.9, 0.1]])
    result = tune_thresholds([small, np.eye(2)[[0, 1, 0, 0]]], [0, 1, 0, 0], [1.0, 5.0], 0.0)
    assert sorted(result.curve.thresholds[:, 0].tolist()) == [0.6, 0.9, math.inf]
    assert result.chosen.thresholds == (math.inf,)  # 0.9 would answer row 1 wrong with rows 0 and 3


def _random_stages(n_rows: int, n_stages: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    logits, labels = labelled_logits(n_rows, 3, seed=seed, scale=4.0)
    generator = np.random.default_rng(seed + 1_000)  # not the labels' stream: the noise must be independent
    # Smaller stages see the true logits through more noise: less accurate, and not in the same rows.
    noise_sd = [3.0 * (n_stages - 1 - i) for i in range(n_stages)]
    return [softmax(logits + generator.normal(0, sd, logits.shape)) for sd in noise_sd], labels


@pytest.mark.parametrize(("seed", "drop"), [(20, 0.0), (21, 0.01), (22, 0.05), (23, 0.2)])
def test_two_stages_match_brute_force_and_stay_within_the_drop(seed: int, drop: float) -> None:
    stages, labels = _random_stages(300, 2, seed)
    costs = [0.3, 2.0]
    result = tune_thresholds(stages, labels, costs, drop, measure="margin")
    reference = evaluate_thresholds(stages, labels, costs, [math.inf], measure="margin").accuracy
    assert result.chosen.accuracy >= reference - drop - 1e-12
    candidates = [math.inf, *np.unique(plan_cascade(stages, [0.0], "margin").confidence)]
    points = [evaluate_thresholds(stages, labels, costs, [t], measure="margin") for t in candidates]
    within = [p for p in points if p.accuracy >= reference - drop - 1e-12]
    assert result.chosen.cost_per_row_usd == pytest.approx(min(p.cost_per_row_usd for p in within), rel=1e-12)
    assert len(result.curve.accuracy) == len(points)
    # Every point of the curve is what routing gives at its thresholds.
    for index in range(0, len(points), 37):
        point = evaluate_thresholds(stages, labels, costs, result.curve.thresholds[index], measure="margin")
        assert (point.accuracy, point.cost_per_row_usd) == pytest.approx(
            (result.curve.accuracy[index], result.curve.cost_per_row_usd[index]), rel=1e-12)


@pytest.mark.parametrize("seed", [30, 31])
def test_three_stages_stay_within_the_drop_and_beat_sending_all_to_the_last(seed: int) -> None:
    stages, labels = _random_stages(120, 3, seed)
    costs, drop = [0.1, 0.5, 3.0], 0.02
    result = tune_thresholds(stages, labels, costs, drop, measure="entropy")
    chosen = evaluate_thresholds(stages, labels, costs, result.chosen.thresholds, measure="entropy")
    assert chosen == result.chosen
    assert chosen.accuracy >= result.reference_accuracy - drop - 1e-12
    # No pair of thresholds the curve holds beats it within the drop, and it is no worse than stage 0 skipped.
    feasible = result.curve.accuracy >= result.reference_accuracy - drop - 1e-12
    assert chosen.cost_per_row_usd <= result.curve.cost_per_row_usd[feasible].min() + 1e-12
    grid = np.unique(plan_cascade(stages, [0.0, 0.0], "entropy").confidence)[::10]
    for t0, t1 in itertools.product([math.inf, *grid], [math.inf]):
        point = evaluate_thresholds(stages, labels, costs, [t0, t1], measure="entropy")
        if point.accuracy >= result.reference_accuracy - drop - 1e-12:
            assert chosen.cost_per_row_usd <= point.cost_per_row_usd + 1e-12


def test_to_dict_writes_skipped_stages_as_null() -> None:
    result = tune_thresholds([SMALL, LARGE], LABELS, COSTS, 0.0)
    doc = result.to_dict()
    assert doc["chosen"]["thresholds"] == [0.75] and doc["curve_points"] == 11
    small = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert tune_thresholds([small, np.eye(2)], [0, 1], [1.0, 5.0], 0.0).to_dict()["chosen"]["thresholds"] == [None]
