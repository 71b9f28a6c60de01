"""Calibration metrics of probability rows against labels: accuracy, NLL, Brier score, ECE, reliability bins."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import PROBABILITY_FLOOR, FloatArray, IndexArray, as_labels, as_probabilities
from infergate.cascade.errors import CascadeError

ECE_BINS = 15  # equal-width confidence bins over [0, 1], as in Guo et al. 2017 ("On Calibration of Modern NNs")


@dataclass(frozen=True, slots=True)
class CalibrationMetrics:
    """How well one set of probability rows predicts its labels."""

    accuracy: float  # fraction of rows whose most probable class is the label
    nll: float  # mean -log p(label), in nats, with p clipped to PROBABILITY_FLOOR
    brier: float  # mean over rows of sum over classes of (p - one-hot label)^2, in [0, 2]
    ece: float  # expected calibration error over ECE_BINS bins of max probability, in [0, 1]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, float]) -> CalibrationMetrics:
        return cls(**{name: float(doc[name]) for name in ("accuracy", "nll", "brier", "ece")})


@dataclass(frozen=True, slots=True)
class ReliabilityBins:
    """Rows grouped by confidence (max probability): the data of a reliability diagram and of ECE."""

    edges: FloatArray  # n_bins + 1 edges over [0, 1]; bin b holds confidences in (edges[b], edges[b + 1]]
    counts: IndexArray  # rows per bin
    accuracy: FloatArray  # fraction of a bin's rows predicted right; NaN for an empty bin
    confidence: FloatArray  # mean confidence of a bin's rows; NaN for an empty bin


def calibration_metrics(probabilities: npt.ArrayLike, labels: npt.ArrayLike,
                        n_bins: int = ECE_BINS) -> CalibrationMetrics:
    """All four metrics of `probabilities` (rows, classes) against integer `labels` (rows,)."""
    p, y = _checked(probabilities, labels)
    return CalibrationMetrics(_accuracy(p, y), _nll(p, y), _brier(p, y), _ece(_bins(p, y, n_bins), len(y)))


def accuracy(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    return _accuracy(*_checked(probabilities, labels))


def negative_log_likelihood(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    return _nll(*_checked(probabilities, labels))


def brier_score(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    return _brier(*_checked(probabilities, labels))


def expected_calibration_error(probabilities: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = ECE_BINS) -> float:
    """Sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|."""
    p, y = _checked(probabilities, labels)
    return _ece(_bins(p, y, n_bins), len(y))


def reliability_bins(probabilities: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = ECE_BINS) -> ReliabilityBins:
    return _bins(*_checked(probabilities, labels), n_bins)


def _checked(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, IndexArray]:
    p = as_probabilities("probabilities", probabilities)
    if p.shape[0] == 0:
        raise CascadeError("probabilities has 0 rows, expected at least 1")
    return p, as_labels("labels", labels, n_rows=p.shape[0], n_classes=p.shape[1])


def _accuracy(p: FloatArray, y: IndexArray) -> float:
    return float(np.mean(p.argmax(axis=1) == y))


def _nll(p: FloatArray, y: IndexArray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], PROBABILITY_FLOOR, 1.0))))


def _brier(p: FloatArray, y: IndexArray) -> float:
    squared = np.square(p)
    # sum_k (p_k - onehot_k)^2 = sum_k p_k^2 - 2 p_label + 1, without building the one-hot matrix
    return float(np.mean(squared.sum(axis=1) - 2.0 * p[np.arange(len(y)), y] + 1.0))


def _bins(p: FloatArray, y: IndexArray, n_bins: int) -> ReliabilityBins:
    if n_bins < 1:
        raise CascadeError(f"n_bins is {n_bins}, expected at least 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    confidence = p.max(axis=1)
    is_right = (p.argmax(axis=1) == y).astype(np.float64)
    # Right-closed bins (lo, hi]: the number of inner edges strictly below a confidence is its bin.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN, on purpose
        bin_accuracy = np.bincount(index, weights=is_right, minlength=n_bins) / counts
        bin_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts.astype(np.intp), bin_accuracy, bin_confidence)


def _ece(bins: ReliabilityBins, n_rows: int) -> float:
    filled = bins.counts > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.counts[filled] / n_rows * gaps))
