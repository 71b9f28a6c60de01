"""A cascade served as a model: a request's rows go to the first stage's batcher, and those its calibrated
confidence does not answer go on to the next stage's, with what is left of the deadline; the answers come back
reassembled in row order."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infergate.batching.batcher import Timings
from infergate.batching.stats import ModelStats
from infergate.cascade.arrays import IndexArray
from infergate.cascade.calibration import calibrated_probabilities
from infergate.cascade.config import (
    CASCADE_FILE,
    CascadeConfig,
    StageConfig,
    check_no_cycle,
    check_output_widths,
    read_cascade_config,
)
from infergate.cascade.errors import CascadeError
from infergate.cascade.model_config import (
    CASCADE_OUTPUTS,
    CONFIDENCE_OUTPUT,
    CONFIG_PARAMETER,
    PROBABILITIES_OUTPUT,
    STAGE_OUTPUT,
    describe_tensors,
    stage_tensor_maps,
)
from infergate.cascade.routing import MEASURES, route_checked
from infergate.models.config import CASCADE_PLATFORM, ModelSpec, TensorSpec, build_spec, read_config
from infergate.models.errors import ConfigError, InferError, ModelUnavailable, Relayed, Status
from infergate.models.repository import available_versions, config_tensor
from infergate.proto import model_config_pb2 as mc
from infergate.server.dataplane import DecodedRequest, InferResult, InferTarget, ModelIO, ParameterValue

logger = logging.getLogger(__name__)

STAGE_PARAMETER = "infergate_stage"  # response parameter: the last stage that answered any of the request's rows
ESCALATED_PARAMETER = "infergate_escalated_rows"  # response parameter: rows the first stage did not answer
SCORE_DATATYPES = ("FP16", "FP32", "FP64")  # what a routed output may hold
# Resolves a stage to its served target, loading it when needed: (cascade, model, version or None) -> target.
StageResolver = Callable[[str, str, int | None], Awaitable[InferTarget]]


@dataclass(slots=True)
class Stage:
    """One stage as this cascade serves it."""

    config: StageConfig
    target: InferTarget
    inputs: dict[str, str]  # cascade input name -> the stage's
    outputs: dict[str, str]  # cascade output name -> the stage's
    stats: ModelStats  # the cascade's view of this stage: its rows, latency and share of device time

    @property
    def name(self) -> str:
        return self.config.model


class CascadeModel:
    """An InferTarget over stages that are InferTargets themselves (models, or other cascades)."""

    def __init__(self, spec: ModelSpec, version: str, config: CascadeConfig, stages: list[Stage]) -> None:
        self._spec = spec
        self._version = version
        self.config = config
        self.stages = stages
        self._stats = ModelStats()
        io = ModelIO.of(spec)
        io.output_names = [name for name in io.output_names if name not in CASCADE_OUTPUTS]  # asked for by name
        self._io = io
        self._measure = MEASURES[config.measure]
        self._is_accepting = True

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def version(self) -> str:
        return self._version

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def io(self) -> ModelIO:
        return self._io

    @property
    def stats(self) -> ModelStats:
        return self._stats

    @property
    def stage_models(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    async def retire(self, drain_timeout_s: float = 30.0) -> None:
        """Stops taking requests; those under way finish in their stages' batchers."""
        self._is_accepting = False

    async def infer(self, request: DecodedRequest, deadline_ns: int) -> InferResult:
        if not self._is_accepting:
            raise ModelUnavailable(self.name, "", "the cascade is being unloaded or the server is shutting down")
        rows = request.rows
        answer = _Answer(rows, request.output_names)
        remaining: IndexArray | None = None  # rows not yet answered; None: all, in order (no copy for stage 0)
        first_timings: Timings | None = None
        phases_ns, busy_ns = np.zeros(4, np.int64), 0  # queue, compute input, infer, output: summed over stages
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            count = rows if remaining is None else len(remaining)
            if index and deadline_ns and time.monotonic_ns() >= deadline_ns:
                raise _deadline_error(self.name, stage.name, count)
            inputs = {stage.inputs[name]: value if remaining is None else value[remaining]
                      for name, value in request.inputs.items()}
            wanted = [stage.config.output, *(stage.outputs[n] for n in answer.stage_outputs)]
            call_ns = time.monotonic_ns()
            result = await stage.target.infer(
                DecodedRequest(inputs, count, list(dict.fromkeys(wanted)), request.priority, request.timeout_us, {}),
                deadline_ns)
            done_ns = time.monotonic_ns()
            phases, busy = _shares(result.timings, count)
            stage.stats.part_done(count, phases, busy, done_ns, e2e_ns=done_ns - call_ns)
            phases_ns += phases
            busy_ns += busy
            first_timings = first_timings or result.timings
            probabilities = self._probabilities(stage, result.outputs)
            if index == last:
                is_answered = np.ones(count, dtype=bool)
                row_confidence = self._measure(probabilities)
            else:
                routing = route_checked(probabilities, stage.config.threshold or 0.0, self.config.measure)
                is_answered, row_confidence = routing.is_answered, routing.confidence
            answer.fill(index, stage, remaining, is_answered, result.outputs, row_confidence, probabilities)
            remaining = np.flatnonzero(~is_answered) if remaining is None else remaining[~is_answered]
            if not len(remaining):
                break
        queue, compute_input, compute_infer, compute_output = (int(ns) for ns in phases_ns)
        self._stats.part_done(rows, (queue, compute_input, compute_infer, compute_output), busy_ns,
                              time.monotonic_ns())
        parameters: dict[str, ParameterValue] = {STAGE_PARAMETER: answer.last_stage,
                                                 ESCALATED_PARAMETER: answer.escalated_rows}
        return InferResult(answer.outputs(), first_timings, parameters, answer.last_stage)

    def _probabilities(self, stage: Stage, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        config = stage.config
        try:
            return calibrated_probabilities(outputs[config.output], config.output_kind, config.temperature,
                                            f"model '{stage.name}' output '{config.output}'")
        except CascadeError as exc:  # e.g. a NaN, or probabilities that do not sum to 1
            raise InferError(f"cascade '{self.name}' could not route on stage '{stage.name}': {exc}") from None


def _deadline_error(cascade: str, stage: str, rows: int) -> InferError:
    return Relayed(f"request to cascade '{cascade}' reached its deadline before stage '{stage}': its {rows} "
                   "escalated row(s) were not computed", Status.DEADLINE_EXCEEDED)


def _shares(timings: Timings | None, rows: int) -> tuple[tuple[int, int, int, int], int]:
    """((queue, compute input, infer, output) ns, busy ns) of `rows` rows in the batch `timings` describes; busy
    is their share of the batch's device time (compute and transforms): the batch may hold other requests' rows."""
    if timings is None or not timings.batch_rows:
        return (0, 0, 0, 0), 0  # a stage that is itself a cascade: its stages record their own
    phases = (timings.dispatched_ns - timings.enqueued_ns, *timings.compute_phases_ns())
    return phases, timings.busy_ns * rows // timings.batch_rows


class _Answer:
    """A request's outputs as the stages answer its rows, written in row order."""

    def __init__(self, rows: int, output_names: list[str]) -> None:
        self.rows = rows
        self.names = output_names
        self.stage_outputs = [name for name in output_names if name not in CASCADE_OUTPUTS]
        self._arrays: dict[str, np.ndarray] = {}
        self._stage = np.zeros(rows, np.int32)
        self._confidence = np.zeros(rows, np.float32)
        self._probabilities: np.ndarray | None = None
        self.last_stage = ""
        self.escalated_rows = 0

    def fill(self, index: int, stage: Stage, remaining: IndexArray | None, is_answered: np.ndarray,
             outputs: Mapping[str, np.ndarray], confidence: np.ndarray, probabilities: np.ndarray) -> None:
        local = np.flatnonzero(is_answered)
        if index == 0:
            self.escalated_rows = self.rows - len(local)
        if not len(local):
            return
        self.last_stage = stage.name
        rows = local if remaining is None else remaining[local]
        is_whole = remaining is None and len(local) == self.rows  # the first stage answered every row
        for name in self.stage_outputs:
            value = outputs[stage.outputs[name]]
            if is_whole:
                self._arrays[name] = value
                continue
            target = self._arrays.get(name)
            if target is None:
                target = self._arrays[name] = np.empty((self.rows, *value.shape[1:]), value.dtype)
            elif target.shape[1:] != value.shape[1:]:
                raise InferError(f"stage '{stage.name}' output '{stage.outputs[name]}' has rows of shape "
                                 f"{list(value.shape[1:])}, but an earlier stage's had {list(target.shape[1:])}")
            target[rows] = value[local]
        self._stage[rows] = index
        self._confidence[rows] = confidence[local]
        if PROBABILITIES_OUTPUT in self.names:
            if self._probabilities is None:
                self._probabilities = np.empty((self.rows, probabilities.shape[1]), np.float32)
            self._probabilities[rows] = probabilities[local]

    def outputs(self) -> dict[str, np.ndarray]:
        outputs = dict(self._arrays)
        outputs[STAGE_OUTPUT] = self._stage.reshape(-1, 1)
        outputs[CONFIDENCE_OUTPUT] = self._confidence.reshape(-1, 1)
        if self._probabilities is not None:
            outputs[PROBABILITIES_OUTPUT] = self._probabilities
        return outputs


# -- loading -------------------------------------------------------------------------------------------------


async def load_cascade(repository: Path, name: str, resolve: StageResolver) -> CascadeModel:
    """Reads REPO/NAME's config.pbtxt and cascade.json, resolves the stages (loading them when needed) and
    checks that they make a cascade; every error is a ConfigError naming the file and field."""
    model_dir = repository / name
    spec = build_spec(read_config(model_dir), model_dir)
    path = _cascade_file(model_dir, spec)
    try:
        config = read_cascade_config(path)
        check_no_cycle(name, config, lambda model: _stages_of(repository, model), str(path))
    except CascadeError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"model '{name}': cannot read {path}: {exc.strerror}") from None
    targets = []
    for index, stage in enumerate(config.stages):
        try:
            targets.append(await resolve(name, stage.model, stage.version))
        except InferError as exc:  # the stage's own error and status, said of the field that names it
            raise Relayed(f"{path}: stages[{index}].model {stage.model!r}: {exc.message}", exc.status) from None
    by_model = dict(zip((stage.model for stage in config.stages), targets))
    try:
        check_output_widths(config, lambda stage: _routed_width(stage, by_model[stage.model].spec), str(path))
        maps = stage_tensor_maps(config, lambda stage: by_model[stage.model].spec.inputs,
                                 lambda stage: by_model[stage.model].spec.outputs, str(path))
    except CascadeError as exc:
        raise ConfigError(str(exc)) from None
    _check_spec(spec, config, targets)
    stages = [Stage(stage, target, inputs, outputs, ModelStats())
              for stage, target, (inputs, outputs) in zip(config.stages, targets, maps)]
    versions = available_versions(model_dir)
    cascade = CascadeModel(spec, str(versions[-1]) if versions else "1", config, stages)
    logger.info("loaded cascade '%s': %s", name, " -> ".join(
        f"{s.name} v{s.target.version}" + (f" (>= {s.config.threshold:g})" if s.config.threshold is not None else "")
        for s in stages))
    return cascade


def _cascade_file(model_dir: Path, spec: ModelSpec) -> Path:
    """The cascade.json the config names: a file in the model's own folder, nowhere else."""
    file_name = spec.parameters.get(CONFIG_PARAMETER, CASCADE_FILE)
    if not file_name or Path(file_name).name != file_name or file_name in (".", ".."):
        raise ConfigError(f"model '{spec.name}': parameter {CONFIG_PARAMETER} is '{file_name}', expected a file "
                          f"name in the model's folder such as {CASCADE_FILE}")
    path = model_dir / file_name
    if not path.is_file():
        raise ConfigError(f"model '{spec.name}': {path} not found; a cascade needs its {CASCADE_FILE} "
                          "(`infergate cascade tune` writes one)")
    return path


def _stages_of(repository: Path, model: str) -> list[str] | None:
    """The stage models of `model` when it is a cascade in the repository, else None (for the cycle check)."""
    model_dir = repository / model
    try:
        config = read_config(model_dir)
        if config.platform != CASCADE_PLATFORM:
            return None
        spec = build_spec(config, model_dir)
        return [stage.model for stage in read_cascade_config(_cascade_file(model_dir, spec)).stages]
    except (InferError, CascadeError, OSError):
        return None  # a stage that does not load fails as itself, with its own reason


def _routed_width(stage: StageConfig, spec: ModelSpec) -> int:
    """Classes per row of the output a stage routes on; 0 when it is not a fixed-width score vector."""
    found = next((t for t in spec.outputs if t.name == stage.output), None)
    if found is None:
        raise CascadeError(f"stage model '{stage.model}' has no output {stage.output!r} "
                           f"(its outputs are {[t.name for t in spec.outputs]})")
    if found.datatype not in SCORE_DATATYPES:
        raise CascadeError(f"stage model '{stage.model}' output {stage.output!r} is {found.datatype}, expected "
                           f"one of {list(SCORE_DATATYPES)} (logits or probabilities)")
    return found.dims[0] if len(found.dims) == 1 and found.dims[0] > 0 else 0


def _check_spec(spec: ModelSpec, config: CascadeConfig, targets: list[InferTarget]) -> None:
    """The cascade's config.pbtxt must declare stages[0]'s tensors and CASCADE_OUTPUTS (or leave them to be
    filled in), and batch no more rows than any stage takes."""
    first = targets[0].spec
    classes = next(t for t in first.outputs if t.name == config.stages[0].output).dims[0]
    expected_inputs = list(first.inputs)
    expected_outputs = [*first.outputs, TensorSpec(PROBABILITIES_OUTPUT, "FP32", (classes,)),
                        TensorSpec(STAGE_OUTPUT, "INT32", (1,)), TensorSpec(CONFIDENCE_OUTPUT, "FP32", (1,))]
    for kind, declared, expected in (("input", spec.inputs, expected_inputs), ("output", spec.outputs,
                                                                                expected_outputs)):
        if declared and _signature(declared) != _signature(expected):
            raise ConfigError(f"model '{spec.name}': config.pbtxt {kind}s are {describe_tensors(declared)}, "
                              f"expected {describe_tensors(expected)} (stages[0]'s, as `infergate cascade tune` "
                              "writes them)")
    if not spec.inputs:
        spec.inputs = expected_inputs
        spec.config.input.extend(config_tensor(mc.ModelInput(), t) for t in expected_inputs)
    if not spec.outputs:
        spec.outputs = expected_outputs
        spec.config.output.extend(config_tensor(mc.ModelOutput(), t) for t in expected_outputs)
    smallest = min(targets, key=lambda t: t.spec.max_batch_size)
    if smallest.spec.max_batch_size <= 0:
        raise ConfigError(f"model '{spec.name}': stage '{smallest.name}' does not batch (max_batch_size "
                          f"{smallest.spec.max_batch_size}), expected stages that batch: a cascade routes rows")
    if not 0 < spec.max_batch_size <= smallest.spec.max_batch_size:
        raise ConfigError(f"model '{spec.name}': max_batch_size is {spec.max_batch_size}, expected 1.."
                          f"{smallest.spec.max_batch_size} (stage '{smallest.name}' takes at most that many rows, "
                          "and a request may reach every stage whole)")


def _signature(tensors: list[TensorSpec]) -> list[tuple[str, str, tuple[int, ...]]]:
    return sorted((t.name, t.datatype, t.dims) for t in tensors)
