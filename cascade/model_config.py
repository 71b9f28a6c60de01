"""The config.pbtxt of a cascade model: the stages' common inputs in, calibrated probabilities, stage and
confidence out, in the protobuf text that models/config.py parses."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from infergate.cascade.config import CASCADE_FILE, CascadeConfig, StageConfig
from infergate.cascade.errors import CascadeConfigError
from infergate.models.datatypes import CONFIG_TO_PROTOCOL

CASCADE_PLATFORM = "infergate_cascade"
CONFIG_PARAMETER = "cascade_config"  # parameters key naming the cascade.json beside config.pbtxt
PROBABILITIES_OUTPUT = "PROBABILITIES"  # FP32 [classes]: the answering stage's calibrated probabilities
STAGE_OUTPUT = "CASCADE_STAGE"  # INT32 [1]: index of the stage that answered the row
CONFIDENCE_OUTPUT = "CASCADE_CONFIDENCE"  # FP32 [1]: that stage's confidence, under the cascade's measure
# Names written into the text unescaped: what tensor and model names use in practice, and no quote or backslash.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.:/\-]+")
_CONFIG_TYPES = {protocol: config for config, protocol in CONFIG_TO_PROTOCOL.items()}  # "FP32" -> "TYPE_FP32"


class TensorLike(Protocol):
    """What a tensor description needs here; models.config.TensorSpec is one."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...  # protocol name: "FP32", "BYTES", ...

    @property
    def dims(self) -> tuple[int, ...]: ...  # one row's shape, without the batch dimension; -1 = any size


def common_inputs(config: CascadeConfig, inputs_of: Callable[[StageConfig], Sequence[TensorLike]],
                  source: str = CASCADE_FILE) -> Sequence[TensorLike]:
    """The inputs every stage takes (a request goes to each stage unchanged), or an error naming the first
    stage whose inputs differ. `inputs_of(stage)` looks up a stage model's inputs."""
    first = inputs_of(config.stages[0])
    for index, stage in enumerate(config.stages[1:], start=1):
        inputs = inputs_of(stage)
        if _signature(inputs) != _signature(first):
            raise CascadeConfigError(f"{source}: stages[{index}].model {stage.model!r} takes inputs "
                                     f"{_describe(inputs)}, expected {_describe(first)} like stages[0]")
    return first


def cascade_config_pbtxt(name: str, inputs: Sequence[TensorLike], n_classes: int, max_batch_size: int,
                         cascade_file: str = CASCADE_FILE) -> str:
    """config.pbtxt text of a cascade model named `name` (its folder's name)."""
    for value, what in [(name, "name"), (cascade_file, "cascade_file"), *((t.name, "input name") for t in inputs)]:
        if not SAFE_NAME.fullmatch(value):
            raise CascadeConfigError(f"config.pbtxt: {what} is {value!r}, expected letters, digits and _.:/-")
    if not inputs:
        raise CascadeConfigError("config.pbtxt: inputs is empty, expected the stages' inputs")
    if n_classes < 2:
        raise CascadeConfigError(f"config.pbtxt: n_classes is {n_classes}, expected at least 2")
    if max_batch_size < 0:
        raise CascadeConfigError(f"config.pbtxt: max_batch_size is {max_batch_size}, expected >= 0")
    outputs = [(PROBABILITIES_OUTPUT, "FP32", (n_classes,)), (STAGE_OUTPUT, "INT32", (1,)),
               (CONFIDENCE_OUTPUT, "FP32", (1,))]
    return (f'name: "{name}"\n'
            f'platform: "{CASCADE_PLATFORM}"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [\n{_tensors([(t.name, t.datatype, t.dims) for t in inputs])}\n]\n"
            f"output [\n{_tensors(outputs)}\n]\n"
            f'parameters {{ key: "{CONFIG_PARAMETER}" value: {{ string_value: "{cascade_file}" }} }}\n')


def _tensors(specs: Sequence[tuple[str, str, tuple[int, ...]]]) -> str:
    lines = []
    for name, datatype, dims in specs:
        if datatype not in _CONFIG_TYPES:
            raise CascadeConfigError(f"config.pbtxt: tensor {name!r} has datatype {datatype!r}, "
                                     f"expected one of {sorted(_CONFIG_TYPES)}")
        shown = ", ".join(str(d) for d in dims)
        lines.append(f'  {{ name: "{name}" data_type: {_CONFIG_TYPES[datatype]} dims: [ {shown} ] }}')
    return ",\n".join(lines)


def _signature(inputs: Sequence[TensorLike]) -> list[tuple[str, str, tuple[int, ...]]]:
    return sorted((t.name, t.datatype, tuple(t.dims)) for t in inputs)


def _describe(inputs: Sequence[TensorLike]) -> str:
    return ", ".join(f"{n} {d} {list(s)}" for n, d, s in _signature(inputs)) or "none"
