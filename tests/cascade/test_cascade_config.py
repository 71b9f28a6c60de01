"""cascade.json: round trips, the newest-version spellings, and each validation error's message."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from infergate.cascade.config import (
    CascadeConfig,
    StageConfig,
    cascade_config_from_dict,
    cascade_config_to_dict,
    check_no_cycle,
    check_output_widths,
    parse_cascade_config,
    read_cascade_config,
    with_calibration,
    write_cascade_config,
)
from infergate.cascade.errors import CascadeConfigError, CascadeError


def _doc() -> dict[str, Any]:
    return {"measure": "margin",
            "stages": [{"model": "small", "version": 2, "output": "LOGITS", "output_kind": "logits",
                        "temperature": 1.7, "threshold": 0.9},
                       {"model": "medium", "version": -1, "output": "PROBS", "output_kind": "probabilities",
                        "temperature": 1.2, "threshold": 0.5},
                       {"model": "large", "output": "PROBS", "output_kind": "probabilities", "temperature": 1.0}]}


CONFIG = CascadeConfig("margin", (StageConfig("small", 2, "LOGITS", "logits", 1.7, 0.9),
                                  StageConfig("medium", None, "PROBS", "probabilities", 1.2, 0.5),
                                  StageConfig("large", None, "PROBS", "probabilities", 1.0, None)))


def test_parses_into_frozen_dataclasses() -> None:
    config = parse_cascade_config(json.dumps(_doc()))
    assert config == CONFIG
    assert config.thresholds == (0.9, 0.5)
    with pytest.raises(AttributeError):
        config.stages[0].threshold = 0.1  # type: ignore[misc]


def test_round_trips_through_the_file(tmp_path: Path) -> None:
    write_cascade_config(tmp_path / "cascade.json", CONFIG)
    assert read_cascade_config(tmp_path / "cascade.json") == CONFIG
    written = json.loads((tmp_path / "cascade.json").read_text())
    assert written["stages"][1]["version"] == -1 and "threshold" not in written["stages"][2]
    assert cascade_config_from_dict(cascade_config_to_dict(CONFIG)) == CONFIG


def test_null_version_is_the_newest() -> None:
    doc = _doc()
    doc["stages"][0]["version"] = None
    assert parse_cascade_config(json.dumps(doc)).stages[0].version is None


def test_the_last_stages_threshold_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    doc = _doc()
    doc["stages"][2]["threshold"] = 0.3
    with caplog.at_level(logging.WARNING, logger="infergate.cascade.config"):
        assert parse_cascade_config(json.dumps(doc)).stages[2].threshold is None
    assert caplog.messages == ["cascade.json: stages[2].threshold is ignored: the last stage answers every row "
                               "that reaches it"]


def test_with_calibration_sets_temperatures_and_thresholds() -> None:
    config = with_calibration(CONFIG, temperatures=[2.0, 1.5, 1.1], thresholds=[0.8, 0.4])
    assert [s.temperature for s in config.stages] == [2.0, 1.5, 1.1]
    assert config.thresholds == (0.8, 0.4) and config.stages[2].threshold is None
    with pytest.raises(CascadeConfigError, match=r"^thresholds has 1 value\(s\), expected 2$"):
        with_calibration(CONFIG, thresholds=[0.5])
    with pytest.raises(CascadeConfigError, match=r"^cascade.json: stages\[0\].threshold is Infinity, expected "):
        with_calibration(CONFIG, thresholds=[float("inf"), 0.5])  # tuning's "skip this stage" cannot be served


def _set(path: str, value: Any) -> dict[str, Any]:
    """_doc() with one field changed (a value of ... deletes it); path like "stages.1.threshold"."""
    doc = _doc()
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return doc


@pytest.mark.parametrize(("path", "value", "message"), [
    ("stages.1.threshold", 1.5, "stages[1].threshold is 1.5, expected a number in [0, 1]"),
    ("stages.0.threshold", ..., "stages[0].threshold is missing, expected a number in [0, 1]"),
    ("stages.0.threshold", True, "stages[0].threshold is true, expected a number in [0, 1]"),
    ("stages.0.temperature", 0, "stages[0].temperature is 0, expected a number > 0"),
    ("stages.0.temperature", "1.2", 'stages[0].temperature is "1.2", expected a number > 0'),
    ("stages.2.temperature", ..., "stages[2].temperature is missing, expected a number > 0"),
    ("stages.0.version", 0, "stages[0].version is 0, expected a version number >= 1, or -1 or null for the newest"),
    ("stages.0.version", 1.0, "stages[0].version is 1.0, expected a version number >= 1, or -1 or null for the "
                              "newest"),
    ("stages.1.output_kind", "softmax", 'stages[1].output_kind is "softmax", expected one of '
                                        "['logits', 'probabilities']"),
    ("stages.0.model", "", 'stages[0].model is "", expected a non-empty string'),
    ("stages.2.output", ..., "stages[2].output is missing, expected a non-empty string"),
    ("stages.0.treshold", 0.5, "stages[0] has unknown field 'treshold', expected only ['model', 'version', "
                               "'output', 'output_kind', 'temperature', 'threshold', 'inputs', 'outputs']"),
    ("stages.1", 3, "stages[1] is 3, expected a JSON object"),
    ("measure", "confidence", "measure is \"confidence\", expected one of ['max_prob', 'margin', 'entropy']"),
    ("measure", ..., "measure is missing, expected one of ['max_prob', 'margin', 'entropy']"),
    ("measure", ["max_prob"], "measure is [\"max_prob\"], expected one of ['max_prob', 'margin', 'entropy']"),
    ("stages", [], "stages is [], expected a list of at least 2 stages (small to large)"),
    ("name", "c", "has unknown field 'name', expected only ['measure', 'stages']"),
])
def test_validation_errors_name_the_file_field_and_expectation(path: str, value: Any, message: str) -> None:
    with pytest.raises(CascadeConfigError) as info:
        parse_cascade_config(json.dumps(_set(path, value)), "models/c/cascade.json")
    assert str(info.value) == f"models/c/cascade.json: {message}"
    assert isinstance(info.value, CascadeError) and isinstance(info.value, ValueError)


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(CascadeConfigError, match=r"^cascade.json: not valid JSON: Expecting value: line 1 column 1"):
        parse_cascade_config("stages: []")
    with pytest.raises(CascadeConfigError, match=r"^cascade.json: the document is \[1\], expected a JSON object$"):
        parse_cascade_config("[1]")


def test_a_cascade_naming_itself_is_a_cycle() -> None:
    own = CascadeConfig("max_prob", (CONFIG.stages[0], StageConfig("c", None, "P", "logits", 1.0, None)))
    with pytest.raises(CascadeConfigError) as info:
        check_no_cycle("c", own, {"c": ["small", "c"]}.get)
    assert str(info.value) == ("cascade.json: stages[1].model 'c' leads back to 'c' (c -> c), expected stages that "
                               "are plain models or other cascades")


def test_a_cycle_through_another_cascade() -> None:
    cascades = {"outer": ["small", "inner"], "inner": ["medium", "outer"]}
    config = CascadeConfig("max_prob", (CONFIG.stages[0], StageConfig("inner", None, "P", "logits", 1.0, None)))
    with pytest.raises(CascadeConfigError, match=r"^cascade.json: stages\[1\].model 'inner' leads back to 'outer' "
                                                 r"\(outer -> inner -> outer\)"):
        check_no_cycle("outer", config, cascades.get)
    check_no_cycle("c", CONFIG, {"medium": ["small", "large"]}.get)  # a cascade as a stage is fine


def test_output_widths_must_agree() -> None:
    widths = {"small": 10, "medium": 10, "large": 12}
    with pytest.raises(CascadeConfigError) as info:
        check_output_widths(CONFIG, lambda stage: widths[stage.model])
    assert str(info.value) == "cascade.json: stages[2].output 'PROBS' of model 'large' has 12 classes, expected 10 " \
                              "like stages[0]"
    widths["large"] = 10
    assert check_output_widths(CONFIG, lambda stage: widths[stage.model]) == 10
    with pytest.raises(CascadeConfigError, match=r"stages\[0\].output 'LOGITS' of model 'small' has width -1, "
                                                 r"expected a fixed number of classes, at least 2$"):
        check_output_widths(CONFIG, lambda stage: -1)


def test_later_stages_map_tensor_names_and_round_trip(tmp_path: Path) -> None:
    doc = _doc()
    doc["stages"][2]["inputs"] = {"INPUT0": "INPUT__0"}
    doc["stages"][2]["outputs"] = {"OUTPUT0": "OUTPUT__0", "SAME": "SAME"}
    stage = parse_cascade_config(json.dumps(doc)).stages[2]
    assert (stage.inputs, stage.outputs) == ((("INPUT0", "INPUT__0"),), (("OUTPUT0", "OUTPUT__0"),))
    assert (stage.input_name("INPUT0"), stage.output_name("SAME")) == ("INPUT__0", "SAME")
    config = parse_cascade_config(json.dumps(doc))
    write_cascade_config(tmp_path / "cascade.json", config)
    assert read_cascade_config(tmp_path / "cascade.json") == config


@pytest.mark.parametrize(("index", "field", "value", "message"), [
    (0, "inputs", {"A": "B"}, "stages[0] maps tensor names, expected none: the cascade's tensors are stages[0]'s own"),
    (1, "outputs", ["A"], "stages[1].outputs is [\"A\"], expected an object of cascade tensor name to this stage's"),
    (1, "inputs", {"A": "X", "B": "X"}, "stages[1].inputs is {\"A\": \"X\", \"B\": \"X\"}, expected each of this"),
])
def test_bad_tensor_maps(index: int, field: str, value: Any, message: str) -> None:
    doc = _doc()
    doc["stages"][index][field] = value
    with pytest.raises(CascadeConfigError) as info:
        parse_cascade_config(json.dumps(doc), "c.json")
    assert str(info.value).startswith(f"c.json: {message}")
