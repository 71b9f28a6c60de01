"""`infergate cascade tune`: stages run on labelled rows, the cascade tuned, written as a model, and reported."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from infergate.cascade.calibrate_command import (
    calibrated_output,
    draw,
    existing_calibration,
    metrics_table,
    predict_scores,
    write_stage_calibration,
)
from infergate.cascade.config import CASCADE_FILE, check_output_widths, write_cascade_config
from infergate.cascade.datafile import LabelledData
from infergate.cascade.errors import CascadeError
from infergate.cascade.metrics import CalibrationMetrics
from infergate.cascade.model_config import SAFE_NAME, TensorLike, cascade_config_pbtxt, stage_tensor_maps
from infergate.cascade.offline import StageModel
from infergate.cascade.plots import plot_accuracy_cost
from infergate.cascade.routing import Measure
from infergate.cascade.splits import stratified_split
from infergate.cascade.tuned import TunedCascade, TuneStage, draft_config, tune_cascade
from infergate.models.config import CASCADE_PLATFORM, CONFIG_FILE, read_config
from infergate.models.errors import ConfigError

logger = logging.getLogger(__name__)

REPORT_FILE = "tune_report.json"  # in --out: the tuning and held-out figures, read by bench/cascade_eval.py
PLOT_FILE = "accuracy_cost.png"  # in --out: the swept thresholds' accuracy against cost, the chosen one starred
EXIT_REFUSED = 1  # tuned, but a stage answers no row: nothing written to the repository

Maps = list[tuple[dict[str, str], dict[str, str]]]


class StageTensors(Protocol):
    """A stage's name and tensors: a StageModel, or what the example repository's build knows of one."""

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorLike]: ...

    @property
    def outputs(self) -> Sequence[TensorLike]: ...


def check_names(repo: Path, name: str, stages: Sequence[str]) -> None:
    """Refuses, before anything loads, a bad cascade name, stage list, or a folder that is a plain model."""
    if not SAFE_NAME.fullmatch(name) or "/" in name:
        raise CascadeError(f"--name {name!r}: expected a model folder name of letters, digits and _.:-")
    if len(stages) < 2:
        raise CascadeError(f"--stages {','.join(stages)!r}: {len(stages)} model(s), expected at least 2, "
                           "small to large, comma-separated")
    if name in stages:
        raise CascadeError(f"--stages {','.join(stages)!r} names {name!r}, the cascade itself; expected other models")
    for stage in stages:
        if not (repo / stage).is_dir():
            known = sorted(p.name for p in repo.iterdir() if p.is_dir()) if repo.is_dir() else []
            raise CascadeError(f"--stages: model {stage!r} is not in the model repository {repo} "
                               f"(its models: {', '.join(known) or 'none'})")
    check_cascade_dir(repo / name)


def check_cascade_dir(model_dir: Path) -> None:
    """Refuses to overwrite a folder that holds anything but a cascade (its config.pbtxt and cascade.json)."""
    if not model_dir.exists():
        return
    if not model_dir.is_dir():
        raise CascadeError(f"--name: {model_dir} is a file, expected a cascade's folder or no such path")
    config_path = model_dir / CONFIG_FILE
    if config_path.is_file():
        try:
            platform = read_config(model_dir).platform
        except ConfigError as exc:
            raise CascadeError(f"--name: {exc}; expected a cascade's config.pbtxt to overwrite") from None
        if platform == CASCADE_PLATFORM:
            return
        raise CascadeError(f"--name: {config_path} has platform {platform or 'unset'!r}, expected "
                           f"{CASCADE_PLATFORM!r}: {model_dir.name!r} is a plain model, refusing to overwrite it")
    if any(model_dir.iterdir()):
        raise CascadeError(f"--name: {model_dir} is not empty and has no {CONFIG_FILE}, expected a cascade's "
                           "folder or none: refusing to overwrite it")


def tensor_maps(models: Sequence[StageTensors], measure: Measure) -> Maps:
    """Per stage, {cascade tensor: its tensor} for inputs and outputs, or CascadeError on a signature mismatch."""
    by_name = {model.name: model for model in models}
    draft = draft_config([model.name for model in models], measure)
    return stage_tensor_maps(draft, lambda stage: by_name[stage.model].inputs,
                             lambda stage: by_name[stage.model].outputs, source="--stages")


def split_rows(data: LabelledData, eval_data: LabelledData | None, eval_fraction: float,
               seed: int) -> tuple[LabelledData, LabelledData]:
    """(tuning rows, evaluation rows): --eval-data when given, else a stratified split of --data by seed."""
    if eval_data is not None:
        return data, eval_data
    if not 0.0 < eval_fraction < 1.0:
        raise CascadeError(f"--eval-fraction is {eval_fraction!r}, expected a number in (0, 1)")
    tuning_rows, evaluation_rows = stratified_split(data.labels, [1.0 - eval_fraction, eval_fraction], seed)
    if len(tuning_rows) == 0 or len(evaluation_rows) == 0:
        raise CascadeError(f"{data.source}: {data.n_rows} rows split {len(tuning_rows)}/{len(evaluation_rows)}, "
                           "expected rows on both sides; pass more rows or --eval-data")
    return data.take(tuning_rows), data.take(evaluation_rows)


def tune(repo: Path, name: str, models: Sequence[StageModel], tuning: LabelledData, evaluation: LabelledData,
         max_accuracy_drop: float, measure: Measure, outputs: Sequence[str | None], out_dir: Path) -> int:
    """Runs the command once the models are open and the rows split; returns its exit status."""
    maps = tensor_maps(models, measure)
    stages: list[TuneStage] = []
    for model, (inputs, cascade_outputs), output in zip(models, maps, outputs):
        model_dir = repo / model.name
        # A later stage routes by default on the output stages[0] routes on, under its own name.
        same_as_first = cascade_outputs.get(stages[0].tuning.output) if stages else None
        chosen = output or calibrated_output(model_dir) or same_as_first
        scores = predict_scores(model, _renamed(tuning, inputs), chosen, None)
        evaluation_scores = predict_scores(model, _renamed(evaluation, inputs), scores.output, scores.kind).scores
        cost = model.cost(_renamed(tuning, inputs).inputs)
        logger.info("model %r: %s", model.name, cost.source)
        stages.append(TuneStage(scores, evaluation_scores, cost, existing_calibration(model_dir, scores)))
    check_output_widths(draft_config([m.name for m in models], measure),
                        lambda stage: stages[[m.name for m in models].index(stage.model)].tuning.scores.shape[1],
                        source="--stages")
    tuned = tune_cascade(name, stages, tuning.labels, evaluation.labels, max_accuracy_drop, measure)
    for stage, calibration in zip(stages, tuned.calibrations):
        if stage.calibration is None:
            print(f"wrote {write_stage_calibration(repo / stage.tuning.model, stage.tuning, calibration)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    refusal = tuned.refusal
    written = [] if refusal else write_cascade(repo / name, tuned, maps, measure, models[0],
                                               min(m.max_batch_size for m in models))
    plot = draw(lambda path: plot_accuracy_cost(path, tuned.tuning, title=f"{name}: accuracy against cost"),
                out_dir / PLOT_FILE)
    report = {**tuned.report, "refused": refusal, "written": [str(p) for p in written], "accuracy_cost_plot": plot}
    report_path = out_dir / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(summary(tuned))
    for path in [*written, plot, report_path]:
        if path is not None:
            print(f"wrote {path}")
    if refusal:
        print(f"infergate cascade tune: {repo / name} not written: {refusal}")
        return EXIT_REFUSED
    return 0


def write_cascade(model_dir: Path, tuned: TunedCascade, maps: Maps, measure: Measure, first: StageTensors,
                  max_batch_size: int) -> list[Path]:
    """Writes the cascade model: config.pbtxt (stages[0]'s tensors) and cascade.json; returns their paths."""
    config = tuned.config(maps, measure)
    n_classes = int(tuned.stages[0].tuning.scores.shape[1])
    text = cascade_config_pbtxt(tuned.name, first.inputs, first.outputs, n_classes, max_batch_size)
    model_dir.mkdir(parents=True, exist_ok=True)
    cascade_path, config_path = model_dir / CASCADE_FILE, model_dir / CONFIG_FILE
    write_cascade_config(cascade_path, config)
    config_path.write_text(text, encoding="utf-8")
    return [config_path, cascade_path]


def summary(tuned: TunedCascade) -> str:
    """The held-out figures as the command prints them."""
    report = tuned.report
    evaluation = report["evaluation"]
    lines = [f"cascade {tuned.name!r}: tuned on {report['tuning_rows']} rows, evaluated on "
             f"{report['evaluation_rows']} others"]
    for stage in report["stages"]:
        threshold = "answers the rest" if stage["threshold"] is None else f"threshold {stage['threshold']:.4g}"
        lines.append(f"  {stage['model']} {stage['output']} ({stage['output_kind']}): T = {stage['temperature']:.4g}"
                     f", {threshold}, {stage['cost_per_inference_usd']:.3g} USD per inference")
    lines.append(metrics_table([(figures["model"], *_metrics(figures)) for figures in evaluation["stages"]]))
    cascade = evaluation["cascade"]
    saving = cascade["saving_fraction"]
    answered = ", ".join(f"{fraction:.3f}" for fraction in cascade["answered_fraction"])
    lines.append(f"  cascade accuracy {cascade['accuracy']:.4f} vs {evaluation['reference_accuracy']:.4f} for the "
                 f"last stage alone (drop {evaluation['accuracy_drop']:+.4f}); answered per stage {answered}; "
                 f"{cascade['cost_per_row_usd']:.3g} USD per row"
                 + (f", saving {saving:.1%}" if saving is not None else ""))
    return "\n".join(lines)


def _metrics(figures: dict[str, Any]) -> tuple[CalibrationMetrics, CalibrationMetrics]:
    accuracy = figures["accuracy"]
    before, after = ({metric: figures[f"{metric}_{when}"] for metric in ("nll", "brier", "ece")}
                     for when in ("before", "after"))
    return CalibrationMetrics(accuracy, **before), CalibrationMetrics(accuracy, **after)


def _renamed(data: LabelledData, inputs: dict[str, str]) -> LabelledData:
    """The data's arrays under a stage's own input names (cascade name -> stage name)."""
    return LabelledData({inputs.get(k, k): v for k, v in data.inputs.items()}, data.labels, data.source)

