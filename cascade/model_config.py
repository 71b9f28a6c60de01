"""The config.pbtxt of a cascade model: stages[0]'s inputs and outputs, plus the calibrated probabilities,
stage and confidence of the answer, in the protobuf text that models/config.py parses; and the matching of
every later stage's tensors to the cascade's."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

from infergate.cascade.config import CASCADE_FILE, CascadeConfig, StageConfig
from infergate.cascade.errors import CascadeConfigError
from infergate.models.config import CASCADE_PLATFORM
from infergate.models.datatypes import CONFIG_TO_PROTOCOL

CONFIG_PARAMETER = "cascade_config"  # parameters key naming the cascade.json beside config.pbtxt
PROBABILITIES_OUTPUT = "CASCADE_PROBABILITIES"  # FP32 [classes]: the answering stage's calibrated probabilities
STAGE_OUTPUT = "CASCADE_STAGE"  # INT32 [1]: index of the stage that answered the row
CONFIDENCE_OUTPUT = "CASCADE_CONFIDENCE"  # FP32 [1]: that stage's confidence, under the cascade's measure
CASCADE_OUTPUTS = (PROBABILITIES_OUTPUT, STAGE_OUTPUT, CONFIDENCE_OUTPUT)  # sent only when a request names them
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


def match_tensors(kind: str, cascade: Sequence[TensorLike], stage: Sequence[TensorLike],
                  explicit: dict[str, str], where: str) -> dict[str, str]:
    """{cascade tensor name: stage tensor name} for every cascade tensor, or an error naming the first that has
    no match of the same datatype and dims. `explicit` (the stage's cascade.json map) wins; then the same name;
    then, when the stage names none of the cascade's tensors, the same position (the example's INPUT0 and
    TorchScript's INPUT__0)."""
    by_name = {t.name: t for t in stage}
    matched: dict[str, str] = {}
    is_positional = not explicit and len(cascade) == len(stage) and not set(by_name) & {t.name for t in cascade}
    for position, tensor in enumerate(cascade):
        name = explicit.get(tensor.name, tensor.name)
        if is_positional:
            name = stage[position].name
        found = by_name.get(name)
        if found is None:
            raise CascadeConfigError(f"{where} has no {kind} {name!r} for the cascade's {kind} {tensor.name!r} "
                                     f"(its {kind}s are {describe_tensors(stage)}); expected one with that name, or a "
                                     f"map in its {kind}s field")
        if (found.datatype, tuple(found.dims)) != (tensor.datatype, tuple(tensor.dims)):
            raise CascadeConfigError(f"{where} {kind} {name!r} is {found.datatype} {list(found.dims)}, expected "
                                     f"{tensor.datatype} {list(tensor.dims)} like the cascade's {tensor.name!r}")
        matched[tensor.name] = name
    unknown = sorted(set(explicit) - {t.name for t in cascade})
    if unknown:
        raise CascadeConfigError(f"{where} maps {kind} {unknown[0]!r}, which is not a cascade {kind} "
                                 f"(expected one of {sorted(t.name for t in cascade)})")
    if len(set(matched.values())) != len(matched):
        raise CascadeConfigError(f"{where} maps two cascade {kind}s to one of its own: {matched}")
    return matched


def stage_tensor_maps(config: CascadeConfig, inputs_of: Callable[[StageConfig], Sequence[TensorLike]],
                      outputs_of: Callable[[StageConfig], Sequence[TensorLike]], source: str = CASCADE_FILE
                      ) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Per stage, ({cascade input: stage input}, {cascade output: stage output}); the cascade's tensors are
    stages[0]'s. Refuses a stage whose inputs differ in signature, or that lacks an output the cascade has."""
    first = config.stages[0]
    cascade_inputs, cascade_outputs = inputs_of(first), outputs_of(first)
    maps = []
    for index, stage in enumerate(config.stages):
        where = f"{source}: stages[{index}].model {stage.model!r}"
        inputs = match_tensors("input", cascade_inputs, inputs_of(stage), dict(stage.inputs), where)
        extra = sorted({t.name for t in inputs_of(stage)} - set(inputs.values()))
        if extra:
            raise CascadeConfigError(f"{where} takes input {extra[0]!r}, which the cascade does not have "
                                     f"(expected inputs {describe_tensors(cascade_inputs)} like stages[0])")
        maps.append((inputs, match_tensors("output", cascade_outputs, outputs_of(stage), dict(stage.outputs), where)))
    return maps


def cascade_config_pbtxt(name: str, inputs: Sequence[TensorLike], outputs: Sequence[TensorLike], n_classes: int,
                         max_batch_size: int, cascade_file: str = CASCADE_FILE) -> str:
    """config.pbtxt text of a cascade model named `name` (its folder's name): stages[0]'s inputs and outputs,
    then CASCADE_OUTPUTS."""
    named = [*((t.name, "input name") for t in inputs), *((t.name, "output name") for t in outputs)]
    for value, what in [(name, "name"), (cascade_file, "cascade_file"), *named]:
        if not SAFE_NAME.fullmatch(value):
            raise CascadeConfigError(f"config.pbtxt: {what} is {value!r}, expected letters, digits and _.:/-")
    if not inputs:
        raise CascadeConfigError("config.pbtxt: inputs is empty, expected the stages' inputs")
    if n_classes < 2:
        raise CascadeConfigError(f"config.pbtxt: n_classes is {n_classes}, expected at least 2")
    if max_batch_size < 0:
        raise CascadeConfigError(f"config.pbtxt: max_batch_size is {max_batch_size}, expected >= 0")
    clash = sorted({t.name for t in outputs} & set(CASCADE_OUTPUTS))
    if clash:
        raise CascadeConfigError(f"config.pbtxt: stages[0] has an output named {clash[0]!r}, expected none of "
                                 f"{list(CASCADE_OUTPUTS)}: the cascade adds those")
    all_outputs = [*((t.name, t.datatype, tuple(t.dims)) for t in outputs),
                   (PROBABILITIES_OUTPUT, "FP32", (n_classes,)), (STAGE_OUTPUT, "INT32", (1,)),
                   (CONFIDENCE_OUTPUT, "FP32", (1,))]
    return (f'name: "{name}"\n'
            f'platform: "{CASCADE_PLATFORM}"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [\n{_tensors([(t.name, t.datatype, t.dims) for t in inputs])}\n]\n"
            f"output [\n{_tensors(all_outputs)}\n]\n"
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


def describe_tensors(tensors: Sequence[TensorLike]) -> str:
    """Tensors as errors name them: "INPUT0 FP32 [64], ..." (or "none")."""
    return ", ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in tensors) or "none"
