"""A cascade tuned from its stages' scores: temperatures and thresholds on the tuning rows, figures on others.

The pure part of `infergate cascade tune`, which the example repository's build calls too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from infergate.cascade.arrays import FloatArray, IndexArray
from infergate.cascade.calibrate_command import StageScores
from infergate.cascade.calibration import Calibration, calibrated_probabilities, evaluate_temperature, fit_temperature
from infergate.cascade.config import CascadeConfig, StageConfig
from infergate.cascade.offline import StageCost
from infergate.cascade.routing import Measure
from infergate.cascade.tuning import TuningResult, evaluate_thresholds, tune_thresholds

# Placeholders of a cascade's first config, before anything is fitted: only its stages' models and tensors count.
DRAFT_TEMPERATURE = 1.0
DRAFT_THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class TuneStage:
    """One stage as tuning takes it."""

    tuning: StageScores  # the routed output on the tuning rows
    evaluation_scores: FloatArray  # the same output on the evaluation rows
    cost: StageCost
    calibration: Calibration | None  # the model's calibration.json; None: fit T on the tuning rows


@dataclass(frozen=True, slots=True)
class TunedCascade:
    """What tuning chose and what it does on rows it never saw."""

    name: str
    stages: tuple[TuneStage, ...]
    calibrations: tuple[Calibration, ...]  # per stage: the one used (read, or fitted on the tuning rows)
    tuning: TuningResult
    report: dict[str, Any]  # tune_report.json

    @property
    def refusal(self) -> str | None:
        """Why no cascade may be written: a stage that answers no row (a threshold of inf); None when fine."""
        for index, threshold in enumerate(self.tuning.chosen.thresholds):
            if math.isinf(threshold):
                model = self.stages[index].tuning.model
                chosen = self.tuning.chosen
                return (f"stage {index} ({model!r}) answers no row: on the {self.report['tuning_rows']} tuning rows "
                        f"no threshold keeps the cascade within --max-accuracy-drop {self.tuning.max_accuracy_drop:g} "
                        f"of {self.stages[-1].tuning.model!r} alone (accuracy "
                        f"{self.tuning.reference_accuracy:.4f}; the cheapest point within it, {chosen.accuracy:.4f}, "
                        f"sends every row on), so the small model is not confident enough for the allowed drop; "
                        "expected a larger --max-accuracy-drop or a more accurate small model")
        return None

    def config(self, maps: Sequence[tuple[dict[str, str], dict[str, str]]], measure: Measure) -> CascadeConfig:
        """cascade.json with the fitted temperatures, tuned thresholds and the stages' tensor name maps."""
        stages = []
        last = len(self.stages) - 1
        for index, (stage, calibration, (inputs, outputs)) in enumerate(zip(self.stages, self.calibrations, maps)):
            threshold = None if index == last else self.tuning.chosen.thresholds[index]
            stages.append(StageConfig(stage.tuning.model, int(stage.tuning.version), stage.tuning.output,
                                      stage.tuning.kind, calibration.temperature, threshold,
                                      _pairs(inputs), _pairs(outputs)))
        return CascadeConfig(measure, tuple(stages))


def draft_config(models: Sequence[str], measure: Measure) -> CascadeConfig:
    """A config naming the stages only, to match their tensors before anything is predicted."""
    last = len(models) - 1
    return CascadeConfig(measure, tuple(StageConfig(model, None, "-", "logits", DRAFT_TEMPERATURE,
                                                    None if index == last else DRAFT_THRESHOLD)
                                        for index, model in enumerate(models)))


def tune_cascade(name: str, stages: Sequence[TuneStage], tuning_labels: IndexArray, evaluation_labels: IndexArray,
                 max_accuracy_drop: float, measure: Measure) -> TunedCascade:
    """Calibrates (where needed) and tunes on the tuning rows; reports on the evaluation rows."""
    calibrations = tuple(stage.calibration or fit_temperature(stage.tuning.scores, tuning_labels, stage.tuning.kind)
                         for stage in stages)
    costs = [stage.cost.usd_per_inference for stage in stages]
    tuning_probabilities = [calibrated_probabilities(stage.tuning.scores, stage.tuning.kind, c.temperature)
                            for stage, c in zip(stages, calibrations)]
    tuning = tune_thresholds(tuning_probabilities, tuning_labels, costs, max_accuracy_drop, measure)
    evaluation = _evaluation(stages, calibrations, evaluation_labels, tuning, measure)
    report = {"cascade": name, "measure": measure, "max_accuracy_drop": float(max_accuracy_drop),
              "tuning_rows": len(tuning_labels), "evaluation_rows": len(evaluation_labels),
              "stages": [_stage_report(index, stage, calibration, tuning)
                         for index, (stage, calibration) in enumerate(zip(stages, calibrations))],
              "tuning": tuning.to_dict(), "evaluation": evaluation}
    return TunedCascade(name, tuple(stages), calibrations, tuning, report)


def _stage_report(index: int, stage: TuneStage, calibration: Calibration, tuning: TuningResult) -> dict[str, Any]:
    thresholds = tuning.chosen.thresholds
    threshold = thresholds[index] if index < len(thresholds) else None
    return {"model": stage.tuning.model, "version": int(stage.tuning.version), "output": stage.tuning.output,
            "output_kind": stage.tuning.kind, "temperature": calibration.temperature,
            "calibration": "read from calibration.json" if stage.calibration else "fitted on the tuning rows",
            "threshold": None if threshold is None or math.isinf(threshold) else threshold,
            "cost_per_inference_usd": stage.cost.usd_per_inference, "cost_source": stage.cost.source}


def _evaluation(stages: Sequence[TuneStage], calibrations: Sequence[Calibration], labels: IndexArray,
                tuning: TuningResult, measure: Measure) -> dict[str, Any]:
    """The evaluation rows' figures: each stage before (T = 1) and after its T, and the tuned cascade."""
    per_stage = []
    probabilities = []
    for stage, calibration in zip(stages, calibrations):
        before = evaluate_temperature(stage.evaluation_scores, labels, stage.tuning.kind, 1.0)
        after = evaluate_temperature(stage.evaluation_scores, labels, stage.tuning.kind, calibration.temperature)
        per_stage.append({"model": stage.tuning.model, "accuracy": after.accuracy,
                          **{f"{metric}_{when}": getattr(metrics, metric)
                             for metric in ("ece", "nll", "brier")
                             for when, metrics in (("before", before), ("after", after))}})
        probabilities.append(calibrated_probabilities(stage.evaluation_scores, stage.tuning.kind,
                                                      calibration.temperature))
    costs = [stage.cost.usd_per_inference for stage in stages]
    point = evaluate_thresholds(probabilities, labels, costs, tuning.chosen.thresholds, measure)
    reference = float(np.mean(probabilities[-1].argmax(axis=1) == labels))
    alone_usd = costs[-1]
    return {"stages": per_stage,
            "cascade": {"accuracy": point.accuracy, "answered_fraction": list(point.answered_fraction),
                        "cost_per_row_usd": point.cost_per_row_usd,
                        "saving_fraction": 1.0 - point.cost_per_row_usd / alone_usd if alone_usd > 0 else None},
            "reference_accuracy": reference, "accuracy_drop": reference - point.accuracy}


def _pairs(names: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((cascade, own) for cascade, own in names.items() if cascade != own))
