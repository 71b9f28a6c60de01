"""`infergate calibrate`: fit one model output's temperature on labelled rows, write calibration.json and a report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergate.cascade.arrays import FloatArray, ScoreKind, as_scores
from infergate.cascade.calibration import (
    CALIBRATION_FILE,
    Calibration,
    calibrated_probabilities,
    fit_temperature,
    read_calibration,
)
from infergate.cascade.datafile import LabelledData, check_label_range
from infergate.cascade.errors import CascadeError
from infergate.cascade.metrics import CalibrationMetrics
from infergate.cascade.offline import StageModel
from infergate.cascade.outputs import choose_output, detect_kind, score_width
from infergate.cascade.plots import plot_reliability_diagram

logger = logging.getLogger(__name__)

REPORT_FILE = "calibration_report.json"  # in --out: calibration.json's content plus the data and files used
DIAGRAM_FILE = "reliability_diagram.png"  # in --out: accuracy against confidence before and after T
METRICS = ("accuracy", "nll", "brier", "ece")  # the table's rows, in CalibrationMetrics' field names


@dataclass(frozen=True, slots=True)
class StageScores:
    """One model output's scores on some rows, and what they are."""

    model: str
    version: str
    output: str
    kind: ScoreKind
    scores: FloatArray  # (rows, classes)


def predict_scores(model: StageModel, data: LabelledData, output: str | None, kind: str | None) -> StageScores:
    """The chosen output's scores on every row of `data`, its kind detected unless given; labels checked."""
    cache: dict[str, FloatArray] = {}

    def scores_of(name: str) -> FloatArray:
        if name not in cache:
            predicted = model.predict(data.inputs, [t.name for t in model.outputs if t.datatype == "FP32"])
            cache.update({key: np.asarray(value, dtype=np.float64) for key, value in predicted.items()})
        return cache[name]

    chosen = choose_output(model.name, model.outputs, output, scores_of)
    width = score_width(model.name, next(t for t in model.outputs if t.name == chosen))
    scores = scores_of(chosen)
    if scores.shape != (data.n_rows, width):
        raise CascadeError(f"model {model.name!r} output {chosen!r} returned shape {list(scores.shape)}, "
                           f"expected [{data.n_rows}, {width}]")
    check_label_range(data, width)
    detected = detect_kind(scores, kind)
    as_scores(f"model {model.name!r} output {chosen!r}", scores, detected)
    return StageScores(model.name, model.version, chosen, detected, scores)


def calibration_doc(scores: StageScores, calibration: Calibration) -> dict[str, Any]:
    """calibration.json: Calibration's fields plus which model version and output it calibrated
    (Calibration.from_dict reads the file and ignores the extra fields)."""
    return {"model": scores.model, "version": int(scores.version), "output": scores.output, **calibration.to_dict()}


def write_stage_calibration(model_dir: Path, scores: StageScores, calibration: Calibration) -> Path:
    path = model_dir / CALIBRATION_FILE
    path.write_text(json.dumps(calibration_doc(scores, calibration), indent=2) + "\n", encoding="utf-8")
    return path


def calibrated_output(model_dir: Path) -> str | None:
    """The output an existing calibration.json calibrated (None: no file, or one written without that field)."""
    path = model_dir / CALIBRATION_FILE
    if not path.is_file():
        return None
    output = _read_doc(path).get("output")
    return output if isinstance(output, str) else None


def existing_calibration(model_dir: Path, scores: StageScores) -> Calibration | None:
    """The model's calibration.json when it calibrated this output and kind; None when there is none."""
    path = model_dir / CALIBRATION_FILE
    if not path.is_file():
        return None
    doc = _read_doc(path)
    calibration = read_calibration(path)
    if doc.get("output", scores.output) != scores.output or calibration.output_kind != scores.kind:
        raise CascadeError(f"{path}: calibrates output {doc.get('output')!r} as {calibration.output_kind}, "
                           f"expected {scores.output!r} as {scores.kind}; pass --outputs to route on that output, "
                           f"or remove the file to refit")
    return calibration


def calibrate(model: StageModel, data: LabelledData, model_dir: Path, out_dir: Path, output: str | None,
              kind: str | None) -> dict[str, Any]:
    """Fits T on every row of `data`, writes calibration.json, the report and the diagram; returns the report."""
    scores = predict_scores(model, data, output, kind)
    calibration = fit_temperature(scores.scores, data.labels, scores.kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration_path = write_stage_calibration(model_dir, scores, calibration)
    probabilities = {"before (T = 1)": calibrated_probabilities(scores.scores, scores.kind, 1.0),
                     f"after (T = {calibration.temperature:.3g})":
                         calibrated_probabilities(scores.scores, scores.kind, calibration.temperature)}
    diagram = draw(lambda path: plot_reliability_diagram(path, data.labels, probabilities,
                                                         title=f"{model.name} {scores.output}"),
                   out_dir / DIAGRAM_FILE)
    report = {**calibration_doc(scores, calibration), "data": data.source,
              "calibration_file": str(calibration_path), "reliability_diagram": diagram}
    report_path = out_dir / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"model {model.name!r} version {model.version} output {scores.output!r} ({scores.kind}), "
          f"{data.n_rows} rows: T = {calibration.temperature:.4g}")
    print(metrics_table([("", calibration.before, calibration.after)]))
    for path in (calibration_path, report_path, diagram):
        if path is not None:
            print(f"wrote {path}")
    return report


def metrics_table(rows: list[tuple[str, CalibrationMetrics, CalibrationMetrics]]) -> str:
    """Before and after per metric, one block per (label, before, after)."""
    lines = [f"{'':<22}{'before':>10}{'after':>10}"]
    for label, before, after in rows:
        for metric in METRICS:
            name = f"{label} {metric}".strip()
            lines.append(f"{name:<22}{getattr(before, metric):>10.4f}{getattr(after, metric):>10.4f}")
    return "\n".join(lines)


def draw(plot: Any, path: Path) -> str | None:
    """Runs a plots.py function; without matplotlib says so in one line and returns None."""
    try:
        return str(plot(path))
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        logger.warning("%s not drawn: %s", path.name, exc)
        return None


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CascadeError(f"{path}: cannot be read as JSON ({exc}), expected what infergate calibrate writes") \
            from None
    if not isinstance(doc, dict):
        raise CascadeError(f"{path}: the document is {type(doc).__name__}, expected a JSON object")
    return doc
