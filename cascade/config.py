"""cascade.json: a cascade's stages as frozen dataclasses, parsed and written, with errors that name the field.

    {"measure": "max_prob",
     "stages": [{"model": "small", "version": 1, "output": "LOGITS", "output_kind": "logits",
                 "temperature": 1.7, "threshold": 0.9},
                {"model": "large", "version": -1, "output": "PROBS", "output_kind": "probabilities",
                 "temperature": 1.1}]}

A version of -1 or null, or none, means the newest version the repository serves. The last stage answers
every row that reaches it, so it has no threshold. The cascade's tensors are those of stages[0]; a later stage
whose tensors are named otherwise maps them, cascade name to its own: "inputs": {"INPUT0": "INPUT__0"},
"outputs": {"OUTPUT0": "OUTPUT__0"} (absent: the same names).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from infergate.cascade.arrays import SCORE_KINDS, ScoreKind, is_number
from infergate.cascade.errors import CascadeConfigError
from infergate.cascade.routing import MEASURES, Measure

logger = logging.getLogger(__name__)

CASCADE_FILE = "cascade.json"
LATEST_VERSION = -1  # what the file may say for "the newest version"; held as None
TOP_FIELDS = ("measure", "stages")
STAGE_FIELDS = ("model", "version", "output", "output_kind", "temperature", "threshold", "inputs", "outputs")
_MISSING: Any = object()  # a field the document leaves out, told apart from an explicit null


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One stage: which model output it routes on and how that output is calibrated."""

    model: str  # model name in the repository
    version: int | None  # version number; None = the newest served
    output: str  # the output tensor whose scores are calibrated and routed on
    output_kind: ScoreKind  # whether that output holds logits or probabilities
    temperature: float  # T > 0: calibrated probabilities = softmax(log-domain scores / T)
    threshold: float | None  # answer rows whose confidence >= threshold, in [0, 1]; None for the last stage
    # (cascade tensor name, this stage's name) for tensors this stage names otherwise than stages[0]
    inputs: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()

    def input_name(self, cascade_name: str) -> str:
        return dict(self.inputs).get(cascade_name, cascade_name)

    def output_name(self, cascade_name: str) -> str:
        return dict(self.outputs).get(cascade_name, cascade_name)


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """A validated cascade.json: at least two stages, small to large."""

    measure: Measure  # how a stage's calibrated probabilities become one confidence per row
    stages: tuple[StageConfig, ...]

    @property
    def thresholds(self) -> tuple[float, ...]:
        """One per stage but the last, in stage order: what routing.plan_cascade takes."""
        return tuple(cast(float, stage.threshold) for stage in self.stages[:-1])


def parse_cascade_config(text: str, source: str = CASCADE_FILE) -> CascadeConfig:
    """Parses the JSON text of a cascade.json; `source` names the file in errors."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CascadeConfigError(f"{source}: not valid JSON: {exc}") from None
    return cascade_config_from_dict(doc, source)


def read_cascade_config(path: Path) -> CascadeConfig:
    return parse_cascade_config(path.read_text(encoding="utf-8"), str(path))


def write_cascade_config(path: Path, config: CascadeConfig) -> None:
    """Writes config as cascade.json, after checking it as the parser would (a bad config is never written)."""
    doc = cascade_config_to_dict(config)
    cascade_config_from_dict(doc, str(path))
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def with_calibration(config: CascadeConfig, temperatures: Sequence[float] | None = None,
                     thresholds: Sequence[float] | None = None) -> CascadeConfig:
    """A copy with fitted temperatures (one per stage) and tuned thresholds (one per stage but the last)."""
    stages = list(config.stages)
    for name, values, expected in (("temperatures", temperatures, len(stages)),
                                   ("thresholds", thresholds, len(stages) - 1)):
        if values is not None and len(values) != expected:
            raise CascadeConfigError(f"{name} has {len(values)} value(s), expected {expected}")
    for index, temperature in enumerate(temperatures or ()):
        stages[index] = replace(stages[index], temperature=temperature)
    for index, threshold in enumerate(thresholds or ()):
        stages[index] = replace(stages[index], threshold=threshold)
    return cascade_config_from_dict(cascade_config_to_dict(replace(config, stages=tuple(stages))), CASCADE_FILE)


def cascade_config_to_dict(config: CascadeConfig) -> dict[str, Any]:
    """The JSON document of a config; the last stage without a threshold, the newest version as -1."""
    stages = []
    for index, stage in enumerate(config.stages):
        doc: dict[str, Any] = {"model": stage.model,
                               "version": LATEST_VERSION if stage.version is None else stage.version,
                               "output": stage.output, "output_kind": stage.output_kind,
                               "temperature": stage.temperature}
        if index < len(config.stages) - 1:
            doc["threshold"] = stage.threshold
        for name in ("inputs", "outputs"):
            pairs = getattr(stage, name)
            if pairs:
                doc[name] = dict(pairs)
        stages.append(doc)
    return {"measure": config.measure, "stages": stages}


def cascade_config_from_dict(doc: Any, source: str = CASCADE_FILE) -> CascadeConfig:
    """Validates a parsed cascade.json document; every error names `source`, the field and what was expected."""
    if not isinstance(doc, dict):
        raise CascadeConfigError(f"{source}: the document is {_show(doc)}, expected a JSON object")
    _refuse_unknown(doc, TOP_FIELDS, "", source)
    measure = doc.get("measure", _MISSING)
    if not isinstance(measure, str) or measure not in MEASURES:
        raise CascadeConfigError(f"{source}: measure is {_show(measure)}, expected one of {list(MEASURES)}")
    stages = doc.get("stages", _MISSING)
    if not isinstance(stages, list) or len(stages) < 2:
        raise CascadeConfigError(f"{source}: stages is {_show(stages)}, expected a list of at least 2 stages "
                                 "(small to large)")
    parsed = tuple(_stage(entry, index, index == len(stages) - 1, source) for index, entry in enumerate(stages))
    return CascadeConfig(cast(Measure, measure), parsed)


def check_no_cycle(cascade: str, config: CascadeConfig, stages_of: Callable[[str], Sequence[str] | None],
                   source: str = CASCADE_FILE) -> None:
    """Refuses a cascade that reaches itself, or any cycle, through its stages.

    `stages_of(model)` returns the stage models of a cascade model, or None for a plain model.
    """
    def visit(model: str, path: list[str], where: str) -> None:
        if model in path:
            loop = " -> ".join([*path[path.index(model):], model])
            raise CascadeConfigError(f"{source}: {where} leads back to {model!r} ({loop}), "
                                     "expected stages that are plain models or other cascades")
        for child in stages_of(model) or ():
            visit(child, [*path, model], where)

    for index, stage in enumerate(config.stages):
        visit(stage.model, [cascade], f"stages[{index}].model {stage.model!r}")


def check_output_widths(config: CascadeConfig, output_width: Callable[[StageConfig], int],
                        source: str = CASCADE_FILE) -> int:
    """Returns the number of classes every stage's output has, or refuses the first that differs.

    `output_width(stage)` looks up the width (classes per row) of the stage model's routed output.
    """
    widths = [output_width(stage) for stage in config.stages]
    for index, (stage, width) in enumerate(zip(config.stages, widths)):
        where = f"{source}: stages[{index}].output {stage.output!r} of model {stage.model!r}"
        if width < 2:
            raise CascadeConfigError(f"{where} has width {width}, expected a fixed number of classes, at least 2")
        if width != widths[0]:
            raise CascadeConfigError(f"{where} has {width} classes, expected {widths[0]} like stages[0]")
    return widths[0]


def _stage(entry: Any, index: int, is_last: bool, source: str) -> StageConfig:
    where = f"{source}: stages[{index}]"
    if not isinstance(entry, dict):
        raise CascadeConfigError(f"{where} is {_show(entry)}, expected a JSON object")
    _refuse_unknown(entry, STAGE_FIELDS, f"stages[{index}]", source)
    model = _text(entry, "model", where)
    output = _text(entry, "output", where)
    version = entry.get("version")  # absent and null both mean the newest
    if version is not None and not (isinstance(version, int) and not isinstance(version, bool)
                                    and (version > 0 or version == LATEST_VERSION)):
        raise CascadeConfigError(f"{where}.version is {_show(version)}, expected a version number >= 1, "
                                 f"or {LATEST_VERSION} or null for the newest")
    kind = entry.get("output_kind", _MISSING)
    if kind not in SCORE_KINDS:
        raise CascadeConfigError(f"{where}.output_kind is {_show(kind)}, expected one of {list(SCORE_KINDS)}")
    temperature = entry.get("temperature", _MISSING)
    if not (is_number(temperature) and math.isfinite(temperature) and temperature > 0):
        raise CascadeConfigError(f"{where}.temperature is {_show(temperature)}, expected a number > 0")
    threshold = entry.get("threshold", _MISSING)
    if is_last:
        if threshold is not _MISSING:
            logger.warning("%s.threshold is ignored: the last stage answers every row that reaches it", where)
        threshold = None
    elif not (is_number(threshold) and 0.0 <= threshold <= 1.0):
        raise CascadeConfigError(f"{where}.threshold is {_show(threshold)}, expected a number in [0, 1]")
    maps = [_name_map(entry, name, where) for name in ("inputs", "outputs")]
    if index == 0 and any(maps):
        raise CascadeConfigError(f"{where} maps tensor names, expected none: the cascade's tensors are "
                                 "stages[0]'s own")
    return StageConfig(model, None if version in (None, LATEST_VERSION) else int(version), output,
                       cast(ScoreKind, kind), float(temperature), None if threshold is None else float(threshold),
                       *maps)


def _name_map(entry: dict[str, Any], name: str, where: str) -> tuple[tuple[str, str], ...]:
    """A stage's optional {cascade tensor name: stage tensor name}; pairs that name the same tensor dropped."""
    doc = entry.get(name, {})
    if not isinstance(doc, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                            for k, v in doc.items()):
        raise CascadeConfigError(f"{where}.{name} is {_show(doc)}, expected an object of cascade tensor name "
                                 "to this stage's tensor name")
    if len(set(doc.values())) != len(doc):
        raise CascadeConfigError(f"{where}.{name} is {_show(doc)}, expected each of this stage's tensors once")
    return tuple(sorted((k, v) for k, v in doc.items() if k != v))


def _text(entry: dict[str, Any], name: str, where: str) -> str:
    value = entry.get(name, _MISSING)
    if not isinstance(value, str) or not value:
        raise CascadeConfigError(f"{where}.{name} is {_show(value)}, expected a non-empty string")
    return value


def _refuse_unknown(doc: dict[str, Any], allowed: Sequence[str], where: str, source: str) -> None:
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        place = f"{where} has" if where else "has"
        raise CascadeConfigError(f"{source}: {place} unknown field {unknown[0]!r}, expected only {list(allowed)}")


def _show(value: Any) -> str:
    """A value as the file spells it: JSON (null, true, "text"), or 'missing' when absent."""
    return "missing" if value is _MISSING else json.dumps(value, default=repr)
