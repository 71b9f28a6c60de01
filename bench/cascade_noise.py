"""What the evaluation's row counts can resolve: the ECE of exact calibration on as many rows, the drop's interval."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from infergate.cascade.calibration import calibrated_probabilities
from infergate.cascade.metrics import expected_calibration_error
from infergate.cascade.offline import open_local
from infergate.cascade.routing import plan_cascade

logger = logging.getLogger(__name__)

# Label draws per stage. Four seeds at this count, 45 to 360 rows: the median moved by up to 0.3 pp, the 90th
# percentile by up to 0.5 pp, small beside the 2 pp bound they are read against.
FLOOR_DRAWS = 2000
FLOOR_SEED = 0
FLOOR_QUANTILES = {"median": 0.5, "p90": 0.9}
BOOTSTRAP_DRAWS = 4000  # paired resamples of the evaluation rows for the accuracy drop's interval
INTERVAL = (0.025, 0.975)  # a 95 % percentile interval


def ece_floor(probabilities: npt.ArrayLike, draws: int = FLOOR_DRAWS, seed: int = FLOOR_SEED) -> dict[str, float]:
    """ECE quantiles when every row's label is drawn from its own probabilities: calibration that is exact by
    construction, measured on this many rows with these confidences. An observed ECE near the floor is noise."""
    p = np.asarray(probabilities, np.float64)
    cumulative = np.cumsum(p, axis=1)
    generator = np.random.default_rng(seed)
    eces = []
    for _ in range(draws):
        u = generator.random((len(p), 1)) * cumulative[:, -1:]
        labels = np.minimum((u >= cumulative).sum(axis=1), p.shape[1] - 1)
        eces.append(expected_calibration_error(p, labels))
    return {name: float(np.quantile(eces, q)) for name, q in FLOOR_QUANTILES.items()}


def drop_interval(large_correct: npt.ArrayLike, cascade_correct: npt.ArrayLike, draws: int = BOOTSTRAP_DRAWS,
                  seed: int = FLOOR_SEED) -> tuple[float, float]:
    """95 % paired-bootstrap interval of accuracy(large) - accuracy(cascade) over the same rows (fractions)."""
    difference = np.asarray(large_correct, np.float64) - np.asarray(cascade_correct, np.float64)
    rows = np.random.default_rng(seed).integers(0, len(difference), (draws, len(difference)))
    low, high = np.quantile(difference[rows].mean(axis=1), INTERVAL)
    return float(low), float(high)


def evidence(repository: Path, eval_npz: Path, tune_report: Mapping[str, Any]) -> dict[str, Any]:
    """The stages rerun on the evaluation rows at the fitted temperatures and threshold: each stage's ECE floor,
    the cascade's routing replayed (its accuracy, to check the report's) and the drop's interval."""
    with np.load(eval_npz) as data:
        features, labels = next(np.asarray(data[k]) for k in data.files if k != "y"), np.asarray(data["y"])
    calibrated = []
    for stage in tune_report["stages"]:
        model = open_local(repository, stage["model"], stage["version"], lambda *_: (0.0, "not priced"))
        scores = model.predict({model.inputs[0].name: features}, [stage["output"]])[stage["output"]]
        calibrated.append(calibrated_probabilities(scores, stage["output_kind"], stage["temperature"]))
    thresholds = [stage["threshold"] for stage in tune_report["stages"][:-1]]
    plan = plan_cascade(calibrated, thresholds, tune_report["measure"])
    cascade_correct = np.argmax(plan.probabilities, axis=1) == labels
    large_correct = np.argmax(calibrated[-1], axis=1) == labels
    return {"ece_floors": [ece_floor(p) for p in calibrated],
            "replayed": {"cascade_accuracy": float(cascade_correct.mean()),
                         "large_accuracy": float(large_correct.mean()),
                         "answered_at_small": float(np.mean(plan.stage == 0))},
            "drop_interval": drop_interval(large_correct, cascade_correct)}
