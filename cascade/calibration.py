"""Temperature scaling: one T > 0 fitted by minimising NLL on held-out rows, applied, recorded as calibration.json."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import (
    SCORE_KINDS,
    FloatArray,
    IndexArray,
    ScoreKind,
    as_labels,
    as_scores,
    is_number,
    log_scores,
    softmax,
)
from infergate.cascade.errors import CascadeError, ConvergenceError
from infergate.cascade.metrics import ECE_BINS, CalibrationMetrics, calibration_metrics

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
# Search bounds on T. Real models land within about 0.3..10; an optimum beyond these bounds means NLL
# keeps falling towards T -> 0 (held-out rows all right with a margin) or T -> inf (scores no better
# than chance), and no finite T is worth recording.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1e3
LOG_T_TOLERANCE = 1e-8  # the golden-section search stops when its bracket on log T is this narrow
MAX_ITERATIONS = 200  # golden section needs about 45 steps to reach the tolerance; more means a bug
INVERSE_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # each golden-section step keeps this fraction of the bracket


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fitted temperature and what it did: the content of calibration.json."""

    temperature: float  # T > 0; calibrated probabilities are softmax(log-domain scores / T)
    output_kind: ScoreKind  # whether the fitted scores were logits or probabilities (logged before scaling)
    n_rows: int  # held-out rows the fit used
    n_classes: int
    before: CalibrationMetrics  # the held-out rows at T = 1
    after: CalibrationMetrics  # the held-out rows at the fitted T
    ece_bins: int = ECE_BINS  # equal-width bins the ECE above used

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "output_kind": self.output_kind, "n_rows": self.n_rows,
                "n_classes": self.n_classes, "ece_bins": self.ece_bins,
                "before": self.before.to_dict(), "after": self.after.to_dict()}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        missing = [name for name in ("temperature", "output_kind", "n_rows", "n_classes", "before", "after")
                   if name not in doc]
        if missing:
            raise CascadeError(f"{CALIBRATION_FILE}: {missing[0]} is missing, expected the fields Calibration writes")
        kind = doc["output_kind"]
        if kind not in SCORE_KINDS:
            raise CascadeError(f"{CALIBRATION_FILE}: output_kind is {kind!r}, expected one of {list(SCORE_KINDS)}")
        return cls(float(doc["temperature"]), cast(ScoreKind, kind), int(doc["n_rows"]), int(doc["n_classes"]),
                   CalibrationMetrics.from_dict(doc["before"]), CalibrationMetrics.from_dict(doc["after"]),
                   int(doc.get("ece_bins", ECE_BINS)))


def write_calibration(path: Path, calibration: Calibration) -> None:
    path.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_calibration(path: Path) -> Calibration:
    return Calibration.from_dict(json.loads(path.read_text(encoding="utf-8")))


def calibrated_probabilities(scores: npt.ArrayLike, kind: ScoreKind, temperature: float, name: str = "") -> FloatArray:
    """softmax(log-domain scores / T): what a stage's routing and answer are computed from.

    `name` says in errors which array was bad (e.g. "model 'small' output 'LOGITS'"); it defaults to `kind`.
    """
    _check_temperature(temperature)
    return softmax(log_scores(as_scores(name or kind, scores, kind), kind) / temperature)


def evaluate_temperature(scores: npt.ArrayLike, labels: npt.ArrayLike, kind: ScoreKind,
                         temperature: float) -> CalibrationMetrics:
    """The metrics of a temperature (fitted elsewhere) on other rows, e.g. a held-out evaluation split."""
    return calibration_metrics(calibrated_probabilities(scores, kind, temperature), labels)


def fit_temperature(scores: npt.ArrayLike, labels: npt.ArrayLike, kind: ScoreKind) -> Calibration:
    """Fits T > 0 minimising the mean NLL of softmax(z / T) on (scores, labels) and reports before and after.

    z are the logits, or the probabilities clipped and logged. The NLL is convex in 1 / T, so it has one
    minimum along log T: a bracket is stepped out from T = 1, then narrowed by golden-section search.
    Raises ConvergenceError when the minimum lies beyond [MIN_TEMPERATURE, MAX_TEMPERATURE].
    """
    z = log_scores(as_scores(kind, scores, kind), kind)
    if z.shape[0] == 0:
        raise CascadeError(f"{kind} has 0 rows, expected at least 1")
    y = as_labels("labels", labels, n_rows=z.shape[0], n_classes=z.shape[1])
    if np.all(z.max(axis=1) == z.min(axis=1)):
        raise ConvergenceError(f"{kind}: every row is constant, so T changes nothing; "
                               "expected rows whose scores differ")
    nll = _nll_along_log_t(z, y)
    log_t = _golden_section(nll, *_bracket(nll, kind))
    temperature = math.exp(log_t)
    logger.debug("fitted T = %.6g on %d rows: NLL %.6g -> %.6g", temperature, len(y), nll(0.0), nll(log_t))
    return Calibration(temperature, kind, int(z.shape[0]), int(z.shape[1]),
                       before=calibration_metrics(softmax(z), y),
                       after=calibration_metrics(softmax(z / temperature), y))


def _nll_along_log_t(z: FloatArray, y: IndexArray) -> Callable[[float], float]:
    """Mean NLL of softmax(z / T) as a function of log T, computed stably for any T in the bounds."""
    rows = np.arange(len(y))
    # NLL = mean(logsumexp(b z) - b z_label) with b = 1 / T; logsumexp(b z) = b max(z) + log sum exp(b (z - max z)).
    top = z.max(axis=1)
    below_top = z - top[:, None]  # <= 0, so exp never overflows however small T is
    label_gap = top - z[rows, y]  # >= 0

    def nll(log_t: float) -> float:
        b = math.exp(-log_t)
        return float(np.mean(b * label_gap + np.log(np.exp(b * below_top).sum(axis=1))))

    return nll


def _bracket(nll: Callable[[float], float], kind: str) -> tuple[float, float]:
    """(lo, hi) in log T holding the minimum: walks downhill from T = 1 in growing steps until NLL rises."""
    lo_bound, hi_bound = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = 0.0, 0.5
    fa, fb = nll(a), nll(b)
    if fb > fa:
        a, b, fa, fb = b, a, fb, fa  # downhill is towards smaller T
    bound = hi_bound if b > a else lo_bound
    while True:
        c = b + 2.0 * (b - a)
        c = min(c, bound) if b > a else max(c, bound)
        fc = nll(c)
        # Strictly above: NLL that stops changing in float (exp underflows as T -> 0 on rows all right)
        # is still falling in exact arithmetic, so the walk goes on to the bound.
        if fc > fb:
            return (min(a, c), max(a, c))
        if c == bound:
            side = ("0 (rows all predicted right with a margin)" if bound < 0
                    else "infinity (scores no better than chance)")
            raise ConvergenceError(
                f"{kind}: temperature did not converge: NLL still falls at T = {math.exp(bound):g}, the search bound, "
                f"as T goes to {side}; expected held-out rows with some errors and some signal"
            )
        a, b, fb = b, c, fc


def _golden_section(nll: Callable[[float], float], lo: float, hi: float) -> float:
    """The minimiser of a unimodal function on [lo, hi], to LOG_T_TOLERANCE."""
    x1, x2 = hi - INVERSE_GOLDEN * (hi - lo), lo + INVERSE_GOLDEN * (hi - lo)
    f1, f2 = nll(x1), nll(x2)
    for _ in range(MAX_ITERATIONS):
        if hi - lo < LOG_T_TOLERANCE:
            return (lo + hi) / 2.0
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - INVERSE_GOLDEN * (hi - lo)
            f1 = nll(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + INVERSE_GOLDEN * (hi - lo)
            f2 = nll(x2)
    raise ConvergenceError(f"temperature did not converge: log T still in [{lo:g}, {hi:g}] after {MAX_ITERATIONS} "
                           f"golden-section steps; expected a bracket narrower than {LOG_T_TOLERANCE}")


def _check_temperature(temperature: float) -> None:
    if not (is_number(temperature) and math.isfinite(temperature) and temperature > 0):
        raise CascadeError(f"temperature is {temperature!r}, expected a finite number > 0")
