"""Temperature scaling: recovers a known T, lowers NLL on miscalibrated rows, refuses fits with no optimum."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cascade_cases import labelled_logits

from infergate.cascade.arrays import softmax
from infergate.cascade.calibration import (
    Calibration,
    calibrated_probabilities,
    evaluate_temperature,
    fit_temperature,
    read_calibration,
    write_calibration,
)
from infergate.cascade.errors import ConvergenceError
from infergate.cascade.metrics import ECE_BINS, calibration_metrics


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_recovers_a_known_temperature_from_logits(true_t: float) -> None:
    logits, labels = labelled_logits(20_000, 5, seed=1)
    # Labels were drawn from softmax(logits), so softmax(logits * T / T) is calibrated: the fit must find T.
    calibration = fit_temperature(logits * true_t, labels, "logits")
    assert calibration.temperature == pytest.approx(true_t, rel=0.03)
    assert calibration.output_kind == "logits"
    assert (calibration.n_rows, calibration.n_classes) == (20_000, 5)


def test_recovers_a_known_temperature_from_probabilities() -> None:
    logits, labels = labelled_logits(20_000, 4, seed=2)
    overconfident = softmax(logits * 2.5).astype(np.float32)  # what a model's softmax output would carry
    calibration = fit_temperature(overconfident, labels, "probabilities")
    assert calibration.temperature == pytest.approx(2.5, rel=0.03)
    assert calibration.output_kind == "probabilities"


def test_fitting_lowers_nll_and_ece_on_miscalibrated_rows() -> None:
    logits, labels = labelled_logits(5_000, 10, seed=3)
    calibration = fit_temperature(logits * 3.0, labels, "logits")
    assert calibration.after.nll < calibration.before.nll
    assert calibration.after.ece < calibration.before.ece
    assert calibration.after.accuracy == calibration.before.accuracy  # T > 0 never changes the argmax


def test_before_and_after_are_the_metrics_at_t_1_and_at_the_fitted_t() -> None:
    logits, labels = labelled_logits(2_000, 3, seed=4)
    calibration = fit_temperature(logits * 0.5, labels, "logits")
    assert calibration.before == calibration_metrics(softmax(logits * 0.5), labels)
    fitted = calibrated_probabilities(logits * 0.5, "logits", calibration.temperature)
    np.testing.assert_allclose(fitted, softmax(logits * 0.5 / calibration.temperature), rtol=1e-12)
    assert calibration.after == calibration_metrics(fitted, labels)
    assert evaluate_temperature(logits * 0.5, labels, "logits", calibration.temperature) == calibration.after


def test_probabilities_are_logged_before_scaling() -> None:
    p = np.array([[0.5, 0.25, 0.25], [0.1, 0.0, 0.9]])
    scaled = calibrated_probabilities(p, "probabilities", 0.5)  # p^2, renormalised; 0 clipped, not NaN
    np.testing.assert_allclose(scaled[0], [0.25 / 0.375, 0.0625 / 0.375, 0.0625 / 0.375], rtol=1e-9)
    assert scaled[1, 1] < 1e-20 and math.isclose(scaled[1].sum(), 1.0)


def test_calibration_json_round_trips(tmp_path: Path) -> None:
    logits, labels = labelled_logits(1_000, 3, seed=5)
    calibration = fit_temperature(logits * 2.0, labels, "logits")
    doc = calibration.to_dict()
    assert set(doc) == {"temperature", "output_kind", "n_rows", "n_classes", "ece_bins", "before", "after"}
    assert doc["ece_bins"] == ECE_BINS and set(doc["before"]) == {"accuracy", "nll", "brier", "ece"}
    write_calibration(tmp_path / "calibration.json", calibration)
    assert read_calibration(tmp_path / "calibration.json") == calibration
    assert Calibration.from_dict(doc) == calibration


def test_rows_all_right_with_a_margin_have_no_finite_temperature() -> None:
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    with pytest.raises(ConvergenceError, match=r"^logits: temperature did not converge: NLL still falls at "
                                               r"T = 0\.001, the search bound, as T goes to 0 "):
        fit_temperature(logits, [0, 1, 0], "logits")


def test_rows_always_wrong_have_no_finite_temperature() -> None:
    logits, _ = labelled_logits(500, 4, seed=6)
    with pytest.raises(ConvergenceError, match=r"NLL still falls at T = 1000, the search bound, as T goes to "
                                               r"infinity \(scores no better than chance\)"):
        fit_temperature(logits, logits.argmin(axis=1), "logits")


def test_constant_rows_have_no_temperature() -> None:
    with pytest.raises(ConvergenceError, match=r"^probabilities: every row is constant, so T changes nothing; "
                                               r"expected rows whose scores differ$"):
        fit_temperature(np.full((4, 2), 0.5), [0, 1, 1, 0], "probabilities")
