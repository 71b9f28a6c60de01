"""The offline workflow an evaluation script runs: fit T on one split, tune on another, report on a third."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cascade_cases import labelled_logits

from infergate.cascade.calibration import calibrated_probabilities, fit_temperature
from infergate.cascade.config import (
    CascadeConfig,
    StageConfig,
    read_cascade_config,
    with_calibration,
    write_cascade_config,
)
from infergate.cascade.routing import plan_cascade
from infergate.cascade.splits import stratified_split
from infergate.cascade.tuning import evaluate_thresholds, tune_thresholds

COSTS_USD = [0.2e-6, 2.0e-6]  # per inference: the small model a tenth of the large one


def test_calibrate_tune_and_report_on_held_out_rows(tmp_path: Path) -> None:
    logits, labels = labelled_logits(6_000, 5, seed=50, scale=2.5)
    generator = np.random.default_rng(51)
    # The small model sees the truth through noise and is overconfident; the large one is sharp and underconfident.
    outputs = [(logits + generator.normal(0, 2.0, logits.shape)) * 2.0, logits * 0.7]
    calibration_rows, tuning_rows, held_out_rows = stratified_split(labels, [0.4, 0.3, 0.3], seed=52)
    temperatures = [fit_temperature(out[calibration_rows], labels[calibration_rows], "logits").temperature
                    for out in outputs]
    assert temperatures[0] > 1.0 > temperatures[1]

    def calibrated(rows: np.ndarray) -> list[np.ndarray]:
        return [calibrated_probabilities(out[rows], "logits", t) for out, t in zip(outputs, temperatures)]

    tuned = tune_thresholds(calibrated(tuning_rows), labels[tuning_rows], COSTS_USD, 0.01)
    assert tuned.saving_fraction is not None and tuned.saving_fraction > 0.05  # 0.11 here
    held_out = evaluate_thresholds(calibrated(held_out_rows), labels[held_out_rows], COSTS_USD,
                                   tuned.chosen.thresholds)
    large_alone = evaluate_thresholds(calibrated(held_out_rows), labels[held_out_rows], COSTS_USD, [np.inf])
    assert held_out.accuracy > large_alone.accuracy - 0.03  # near the tuning drop on rows it never saw

    base = CascadeConfig("max_prob", (StageConfig("small", 1, "LOGITS", "logits", 1.0, 0.5),
                                      StageConfig("large", None, "LOGITS", "logits", 1.0, None)))
    config = with_calibration(base, temperatures, tuned.chosen.thresholds)
    write_cascade_config(tmp_path / "cascade.json", config)
    served = read_cascade_config(tmp_path / "cascade.json")
    # What the server will route from the file is what tuning measured.
    plan = plan_cascade(calibrated(held_out_rows), served.thresholds, served.measure)
    assert (plan.predictions == labels[held_out_rows]).mean() == held_out.accuracy
