"""Bad input: each a CascadeError (a ValueError) whose message names the array or field, the value and what
was expected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from infergate.cascade.calibration import calibrated_probabilities, fit_temperature
from infergate.cascade.errors import CascadeError
from infergate.cascade.metrics import calibration_metrics
from infergate.cascade.routing import confidence, plan_cascade, route_stage
from infergate.cascade.tuning import tune_thresholds

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
LOGITS = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])

CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("label above the classes", lambda: calibration_metrics(P, [0, 3]),
     "labels has 3 at row 1, expected class indices in [0, 3)"),
    ("negative label", lambda: fit_temperature(LOGITS, [-1, 0], "logits"),
     "labels has -1 at row 0, expected class indices in [0, 3)"),
    ("fractional label", lambda: fit_temperature(LOGITS, [0.0, 1.5], "logits"),
     "labels has 1.5 at row 1, expected integer class indices"),
    ("string labels", lambda: calibration_metrics(P, ["a", "b"]),
     "labels has dtype <U1, expected integer class indices"),
    ("labels of two dims", lambda: calibration_metrics(P, [[0], [1]]),
     "labels has shape (2, 1), expected 1-D (rows,) class indices"),
    ("labels row count", lambda: fit_temperature(LOGITS, [0, 1, 2], "logits"),
     "labels has 3 rows, expected 2 like the scores"),
    ("stage row counts", lambda: plan_cascade([P, P[:1]], [0.5], "max_prob"),
     "stage_probabilities[1] has 1 rows, expected 2 like stage_probabilities[0]"),
    ("stage widths", lambda: tune_thresholds([P, P[:, :2] / P[:, :2].sum(axis=1, keepdims=True)], [0, 1], [1, 2], 0),
     "stage_probabilities[1] has 2 classes, expected 3 like stage_probabilities[0]"),
    ("negative probability", lambda: route_stage([[1.2, -0.2]], 0.5, "max_prob"),
     "probabilities has -0.2 at row 0, column 1; expected probabilities >= 0"),
    ("row not summing to 1", lambda: confidence([[0.5, 0.5], [0.6, 0.6]], "margin"),
     "probabilities row 1 sums to 1.2, expected 1 within 0.001 (probabilities; are these logits?)"),
    ("logits declared probabilities", lambda: fit_temperature(LOGITS, [0, 1], "probabilities"),
     "probabilities has -1.0 at row 0, column 2; expected probabilities >= 0"),
    ("NaN logit", lambda: fit_temperature([[0.0, np.nan], [1.0, 0.0]], [0, 1], "logits"),
     "logits has 1 NaN or infinite value(s), the first nan at row 0, column 1; expected finite numbers"),
    ("infinite logit", lambda: calibrated_probabilities([[0.0, 1.0], [np.inf, 0.0]], "logits", 1.0),
     "logits has 1 NaN or infinite value(s), the first inf at row 1, column 0; expected finite numbers"),
    ("one class", lambda: fit_temperature([[1.0], [2.0]], [0, 0], "logits"),
     "logits has 1 class column(s), expected at least 2"),
    ("one dimension", lambda: confidence([0.5, 0.5], "max_prob"),
     "probabilities has shape (2,), expected 2-D (rows, classes)"),
    ("text scores", lambda: fit_temperature([["a", "b"]], [0], "logits"), "logits has dtype <U1, expected numbers"),
    ("no rows", lambda: fit_temperature(np.zeros((0, 2)), [], "logits"), "logits has 0 rows, expected at least 1"),
    ("unknown kind", lambda: fit_temperature(LOGITS, [0, 1], "scores"),  # type: ignore[arg-type]
     "scores: kind is 'scores', expected one of ['logits', 'probabilities']"),
    ("zero temperature", lambda: calibrated_probabilities(LOGITS, "logits", 0.0),
     "temperature is 0.0, expected a finite number > 0"),
    ("unknown measure", lambda: route_stage(P, 0.5, "confidence"),  # type: ignore[arg-type]
     "measure is 'confidence', expected one of ['max_prob', 'margin', 'entropy']"),
    ("NaN threshold", lambda: route_stage(P, float("nan"), "max_prob"),
     "threshold is nan, expected a number (0 answers every row, above 1 none)"),
    ("threshold count", lambda: plan_cascade([P, P, P], [0.5], "max_prob"),
     "thresholds has 1 value(s), expected 2 (one per stage but the last)"),
    ("one stage", lambda: plan_cascade([P], [], "max_prob"), "stage_probabilities has 1 stage(s), expected at least 2"),
    ("negative cost", lambda: tune_thresholds([P, P], [0, 1], [1.0, -2.0], 0.01),
     "cost_per_inference_usd[1] is -2.0, expected a finite number >= 0"),
    ("cost count", lambda: tune_thresholds([P, P], [0, 1], [1.0], 0.01),
     "cost_per_inference_usd has 1 value(s), expected 2 (one per stage)"),
    ("drop above 1", lambda: tune_thresholds([P, P], [0, 1], [1.0, 2.0], 5),
     "max_accuracy_drop is 5, expected a number in [0, 1]"),
]


@pytest.mark.parametrize(("call", "message"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_value_error(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(CascadeError) as info:
        call()
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
