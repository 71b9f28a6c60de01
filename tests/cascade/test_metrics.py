"""Calibration metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infergate.cascade.metrics import (
    accuracy,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

# Confidences 0.7, 0.55, 0.45, 0.72: 15 bins of width 1/15 put them in bins 10, 8, 6 and 10 (0.7 * 15 = 10.5,
# 0.72 * 15 = 10.8), away from every edge.
P = np.array([[0.7, 0.2, 0.1], [0.35, 0.55, 0.1], [0.3, 0.25, 0.45], [0.72, 0.18, 0.1]])
LABELS = np.array([0, 0, 2, 1])  # right, wrong, right, wrong


def test_accuracy_counts_argmax_hits() -> None:
    assert accuracy(P, LABELS) == 0.5


def test_nll_is_the_mean_negative_log_of_the_label_probability() -> None:
    assert negative_log_likelihood(P, LABELS) == pytest.approx(-(math.log(0.7) + math.log(0.35) + math.log(0.45)
                                                                 + math.log(0.18)) / 4, rel=1e-12)


def test_brier_is_the_mean_squared_distance_to_the_one_hot_label() -> None:
    # rows: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; 0.65^2 + 0.55^2 + 0.1^2 = 0.735;
    #       0.3^2 + 0.25^2 + 0.55^2 = 0.455; 0.72^2 + 0.82^2 + 0.1^2 = 1.2008
    assert brier_score(P, LABELS) == pytest.approx((0.14 + 0.735 + 0.455 + 1.2008) / 4, rel=1e-12)


def test_brier_bounds() -> None:
    assert brier_score([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0.0
    assert brier_score([[1.0, 0.0], [0.0, 1.0]], [1, 0]) == 2.0


def test_ece_weighs_each_bins_gap_by_its_rows() -> None:
    # bin 10: rows 0 and 3, accuracy 1/2, mean confidence 0.71 -> gap 0.21, weight 2/4
    # bin 8: row 1, accuracy 0, confidence 0.55; bin 6: row 2, accuracy 1, confidence 0.45 -> gap 0.55 each
    assert expected_calibration_error(P, LABELS) == pytest.approx((2 * 0.21 + 0.55 + 0.55) / 4, rel=1e-12)


def test_ece_of_perfectly_calibrated_bins_is_zero() -> None:
    # Four rows at confidence 0.75, three of them right: the bin's accuracy equals its confidence.
    p = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(p, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-15)


def test_reliability_bins() -> None:
    bins = reliability_bins(P, LABELS)
    assert len(bins.edges) == 16 and bins.edges[0] == 0.0 and bins.edges[-1] == 1.0
    assert bins.counts.tolist() == [0] * 6 + [1, 0, 1, 0, 2] + [0] * 4
    assert bins.accuracy[10] == 0.5 and bins.confidence[10] == pytest.approx(0.71)
    assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])


def test_confidence_one_is_in_the_last_bin() -> None:
    bins = reliability_bins([[1.0, 0.0]], [0], n_bins=4)
    assert bins.counts.tolist() == [0, 0, 0, 1]


def test_calibration_metrics_gathers_the_four() -> None:
    metrics = calibration_metrics(P, LABELS)
    assert metrics.accuracy == accuracy(P, LABELS)
    assert metrics.nll == negative_log_likelihood(P, LABELS)
    assert metrics.brier == brier_score(P, LABELS)
    assert metrics.ece == expected_calibration_error(P, LABELS)
