"""Routing: the confidence measures by hand, one stage's decision, and cascades planned row for row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cascade_cases import labelled_logits

from infergate.cascade.arrays import softmax
from infergate.cascade.routing import MEASURES, confidence, plan_cascade, route_stage

ROW = [0.7, 0.2, 0.1]


def _stages(n_rows: int, n_stages: int, seed: int) -> list[np.ndarray]:
    return [softmax(labelled_logits(n_rows, 4, seed=seed + i, scale=1.0 + i)[0]) for i in range(n_stages)]


def test_max_prob_and_margin_by_hand() -> None:
    assert confidence([ROW], "max_prob").tolist() == [0.7]
    assert confidence([ROW], "margin")[0] == pytest.approx(0.5)
    assert confidence([[0.4, 0.2, 0.4]], "margin").tolist() == [0.0]  # the two leading classes tie


def test_entropy_is_one_minus_normalised_entropy() -> None:
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert confidence([ROW], "entropy")[0] == pytest.approx(1.0 - entropy / math.log(3), rel=1e-12)


@pytest.mark.parametrize(("row", "expected"), [([1.0, 0.0, 0.0], {"max_prob": 1.0, "margin": 1.0, "entropy": 1.0}),
                                               ([1 / 3] * 3, {"max_prob": 1 / 3, "margin": 0.0, "entropy": 0.0})])
def test_measures_at_their_ends(row: list[float], expected: dict[str, float]) -> None:
    for measure, value in expected.items():
        assert confidence([row], measure)[0] == pytest.approx(value, abs=1e-12), measure  # type: ignore[arg-type]


@pytest.mark.parametrize("measure", list(MEASURES))
def test_measures_lie_in_0_1_and_are_row_wise(measure: str) -> None:
    p = _stages(500, 1, seed=10)[0]
    values = confidence(p, measure)  # type: ignore[arg-type]
    assert values.min() >= 0.0 and values.max() <= 1.0
    rows = np.array([3, 1, 400, 7])
    # A row's confidence never depends on the other rows, their count or the array's layout and dtype:
    # the server routes sub-batches of escalated rows and must agree with plans over whole arrays.
    assert confidence(p[rows], measure).tolist() == values[rows].tolist()  # type: ignore[arg-type]
    assert confidence(np.asfortranarray(p), measure).tolist() == values.tolist()  # type: ignore[arg-type]


def test_route_stage_answers_rows_at_or_above_the_threshold() -> None:
    routing = route_stage([ROW, [0.5, 0.3, 0.2], [0.9, 0.05, 0.05]], 0.7, "max_prob")
    assert routing.is_answered.tolist() == [True, False, True]
    assert routing.confidence.tolist() == [0.7, 0.5, 0.9]
    assert routing.answered_rows.tolist() == [0, 2] and routing.escalated_rows.tolist() == [1]


@pytest.mark.parametrize("measure", list(MEASURES))
def test_route_stage_threshold_0_answers_all_and_above_1_none(measure: str) -> None:
    p = _stages(200, 1, seed=11)[0]
    assert route_stage(p, 0.0, measure).is_answered.all()  # type: ignore[arg-type]
    assert not route_stage(p, 1.0 + 1e-9, measure).is_answered.any()  # type: ignore[arg-type]


@pytest.mark.parametrize("n_stages", [2, 3])
def test_thresholds_0_send_every_row_to_stage_0(n_stages: int) -> None:
    stages = _stages(300, n_stages, seed=12)
    plan = plan_cascade(stages, [0.0] * (n_stages - 1), "max_prob")
    assert plan.stage.tolist() == [0] * 300
    assert plan.probabilities.tolist() == stages[0].tolist()
    assert plan.predictions.tolist() == stages[0].argmax(axis=1).tolist()
    assert plan.confidence.tolist() == stages[0].max(axis=1).tolist()
    assert plan.answered_fraction(n_stages) == (1.0,) + (0.0,) * (n_stages - 1)


@pytest.mark.parametrize(("n_stages", "threshold"), [(2, 1.5), (3, 1.0 + 1e-12), (3, math.inf)])
def test_thresholds_above_1_send_every_row_to_the_last_stage(n_stages: int, threshold: float) -> None:
    stages = _stages(300, n_stages, seed=13)
    plan = plan_cascade(stages, [threshold] * (n_stages - 1), "margin")
    assert plan.stage.tolist() == [n_stages - 1] * 300
    assert plan.probabilities.tolist() == stages[-1].tolist()
    assert plan.predictions.tolist() == stages[-1].argmax(axis=1).tolist()


@pytest.mark.parametrize("measure", list(MEASURES))
def test_plan_agrees_row_for_row_with_routing_stage_by_stage(measure: str) -> None:
    stages = _stages(1_000, 3, seed=14)
    thresholds = [0.6, 0.45]
    plan = plan_cascade(stages, thresholds, measure)  # type: ignore[arg-type]
    # What the server does live: each stage sees only the rows the stages before it escalated.
    stage = np.full(1_000, 2)
    remaining = np.arange(1_000)
    for index, threshold in enumerate(thresholds):
        routing = route_stage(stages[index][remaining], threshold, measure)  # type: ignore[arg-type]
        answered = remaining[routing.answered_rows]
        assert plan.confidence[answered].tolist() == routing.confidence[routing.answered_rows].tolist()
        stage[answered] = index
        remaining = remaining[routing.escalated_rows]
    assert plan.stage.tolist() == stage.tolist()
    assert 0 < (plan.stage == 0).sum() < 1_000 and (plan.stage == 1).sum() > 0  # every stage answers some rows
    for index in range(3):
        here = plan.stage == index
        assert plan.probabilities[here].tolist() == stages[index][here].tolist()
        assert plan.confidence[here].tolist() == confidence(stages[index][here], measure).tolist()  # type: ignore[arg-type]


def test_plan_of_no_rows() -> None:
    plan = plan_cascade([np.zeros((0, 3)), np.zeros((0, 3))], [0.5], "entropy")
    assert plan.stage.shape == (0,) and plan.probabilities.shape == (0, 3)
    assert plan.answered_fraction(2) == (0.0, 0.0)
