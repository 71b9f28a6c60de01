"""A cascade's config.pbtxt: text that models/config.py parses, with the stages' common inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infergate.cascade.config import CascadeConfig, StageConfig
from infergate.cascade.errors import CascadeConfigError
from infergate.cascade.model_config import (
    CASCADE_PLATFORM,
    CONFIDENCE_OUTPUT,
    PROBABILITIES_OUTPUT,
    STAGE_OUTPUT,
    cascade_config_pbtxt,
    stage_tensor_maps,
)
from infergate.models.config import TensorSpec, check_fields, read_config, tensor_specs

INPUTS = [TensorSpec("INPUT0", "FP32", (64,)), TensorSpec("MASK", "BOOL", (-1,))]
OUTPUTS = [TensorSpec("OUTPUT0", "FP32", (10,)), TensorSpec("LOGITS", "FP32", (10,))]
CONFIG = CascadeConfig("max_prob", (StageConfig("small", None, "LOGITS", "logits", 1.5, 0.9),
                                    StageConfig("large", 3, "PROBS", "probabilities", 1.1, None)))


def test_models_config_parses_the_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir = tmp_path / "digits_cascade"
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(cascade_config_pbtxt("digits_cascade", INPUTS, OUTPUTS, 10, 16))
    config = read_config(model_dir)
    assert (config.name, config.platform, config.max_batch_size) == ("digits_cascade", CASCADE_PLATFORM, 16)
    assert tensor_specs(list(config.input), "input", config.name) == INPUTS
    assert tensor_specs(list(config.output), "output", config.name) == [
        *OUTPUTS, TensorSpec(PROBABILITIES_OUTPUT, "FP32", (10,)), TensorSpec(STAGE_OUTPUT, "INT32", (1,)),
        TensorSpec(CONFIDENCE_OUTPUT, "FP32", (1,))]
    assert config.parameters["cascade_config"].string_value == "cascade.json"
    with caplog.at_level(logging.WARNING):
        check_fields(config)  # every field it sets is one infergate honours
    assert caplog.messages == []


def test_stages_match_by_name_then_by_position() -> None:
    inputs = {"small": INPUTS, "large": list(reversed(INPUTS))}  # order does not matter when names match
    renamed = [TensorSpec("OUTPUT__0", "FP32", (10,)), TensorSpec("OUTPUT__1", "FP32", (10,))]
    outputs = {"small": OUTPUTS, "large": renamed}
    maps = stage_tensor_maps(CONFIG, lambda s: inputs[s.model], lambda s: outputs[s.model])
    assert maps[1] == ({"INPUT0": "INPUT0", "MASK": "MASK"}, {"OUTPUT0": "OUTPUT__0", "LOGITS": "OUTPUT__1"})
    inputs["large"] = [TensorSpec("INPUT0", "FP32", (32,)), INPUTS[1]]
    with pytest.raises(CascadeConfigError) as info:
        stage_tensor_maps(CONFIG, lambda s: inputs[s.model], lambda s: outputs[s.model])
    assert str(info.value) == ("cascade.json: stages[1].model 'large' input 'INPUT0' is FP32 [32], expected "
                               "FP32 [64] like the cascade's 'INPUT0'")


def test_a_stage_missing_an_output_or_taking_another_input_is_refused() -> None:
    inputs = {"small": INPUTS, "large": [*INPUTS, TensorSpec("EXTRA", "FP32", (1,))]}
    outputs = {"small": OUTPUTS, "large": OUTPUTS[:1]}
    with pytest.raises(CascadeConfigError, match="stages\\[1\\].model 'large' takes input 'EXTRA'"):
        stage_tensor_maps(CONFIG, lambda s: inputs[s.model], lambda s: outputs[s.model])
    inputs["large"] = INPUTS
    with pytest.raises(CascadeConfigError, match="has no output 'LOGITS' for the cascade's output 'LOGITS'"):
        stage_tensor_maps(CONFIG, lambda s: inputs[s.model], lambda s: outputs[s.model])


@pytest.mark.parametrize(("name", "inputs", "n_classes", "message"), [
    ('bad"name', INPUTS, 10, "config.pbtxt: name is 'bad\"name', expected letters, digits and _.:/-"),
    ("c", [], 10, "config.pbtxt: inputs is empty, expected the stages' inputs"),
    ("c", INPUTS, 1, "config.pbtxt: n_classes is 1, expected at least 2"),
    ("c", [TensorSpec("X", "FP8", (2,))], 10, "config.pbtxt: tensor 'X' has datatype 'FP8', expected one of "),
])
def test_bad_pbtxt_arguments(name: str, inputs: list[TensorSpec], n_classes: int, message: str) -> None:
    with pytest.raises(CascadeConfigError) as info:
        cascade_config_pbtxt(name, inputs, OUTPUTS, n_classes, 8)
    assert str(info.value).startswith(message)
