"""Model configuration: parse config.pbtxt (Triton's ModelConfig text format) and validate it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from infergate.models.datatypes import CONFIG_TO_PROTOCOL
from infergate.models.errors import ConfigError
from infergate.proto import model_config_pb2 as mc

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
# Platform/backend names infergate serves, and the model file each expects by default.
PLATFORM_FILES = {"onnxruntime_onnx": "model.onnx", "pytorch_libtorch": "model.pt"}
BACKEND_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}
# A cascade of other models (cascade/): no model file, and no version folder needed.
CASCADE_PLATFORM = "infergate_cascade"
PLATFORMS = sorted([*PLATFORM_FILES, CASCADE_PLATFORM])

# ModelConfig fields infergate honours; any other field set in a config is reported.
HONOURED_FIELDS = {
    "name", "platform", "backend", "max_batch_size", "input", "output", "dynamic_batching",
    "instance_group", "model_warmup", "version_policy", "parameters", "default_model_filename",
}
# Fields whose absence of support would silently change answers: refused, not just warned.
REFUSED_FIELDS = {"sequence_batching", "ensemble_scheduling", "batch_input", "batch_output"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model, as the client sees it."""

    name: str
    datatype: str  # protocol name: "FP32", "BYTES", ...
    dims: tuple[int, ...]  # shape of one row (without the batch dim); -1 = any size
    optional: bool = False
    reshape: tuple[int, ...] | None = None  # the row shape the model itself sees, when it differs

    def full_shape(self, max_batch_size: int) -> list[int]:
        """The shape ModelMetadata reports: a leading -1 batch dim when the model batches."""
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)


@dataclass(frozen=True, slots=True)
class QueuePolicySpec:
    """Triton's ModelQueuePolicy: how many requests of a priority level may wait, and for how long."""

    max_queue_size: int = 0  # 0 = unbounded
    default_timeout_us: int = 0  # 0 = none
    allow_timeout_override: bool = False


@dataclass(frozen=True, slots=True)
class DynamicBatchingSpec:
    """Triton's dynamic_batching, as the batcher reads it."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    priority_levels: int = 1
    default_priority_level: int = 1
    default_queue_policy: QueuePolicySpec = QueuePolicySpec()
    priority_queue_policies: tuple[tuple[int, QueuePolicySpec], ...] = ()  # (level, policy) for levels that differ


@dataclass(frozen=True, slots=True)
class InstanceGroupSpec:
    """One instance_group: how many instances, on what kind of device."""

    count: int
    kind: str  # "KIND_AUTO" (the default), "KIND_CPU", "KIND_GPU", ... as model_config.proto names them
    gpus: tuple[int, ...] = ()  # the CUDA devices it may use (empty: any, i.e. device 0)


@dataclass(frozen=True, slots=True)
class WarmupInputSpec:
    """One input of a model_warmup entry."""

    datatype: str  # protocol name
    dims: tuple[int, ...]  # one row's shape
    source: str  # "zero_data", "random_data" or "input_data_file", as model_config.proto names them


@dataclass(frozen=True, slots=True)
class WarmupSpec:
    """One model_warmup entry: `count` runs of a batch of `batch_size` rows."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[tuple[str, WarmupInputSpec], ...]


@dataclass(slots=True)
class ModelSpec:
    """A validated model config: what the repository, batcher and runtime need to know."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # The full proto, only for the ModelConfig RPC to echo: batching/ and the runtimes read the fields below.
    config: mc.ModelConfig

    parameters: dict[str, str] = field(default_factory=dict)
    dynamic_batching: DynamicBatchingSpec | None = None  # None: no dynamic_batching, one request a batch
    instance_groups: tuple[InstanceGroupSpec, ...] = ()
    warmups: tuple[WarmupSpec, ...] = ()

    @property
    def instance_count(self) -> int:
        return sum(max(group.count, 1) for group in self.instance_groups) or 1

    @property
    def model_filename(self) -> str:
        return self.config.default_model_filename or PLATFORM_FILES[self.platform]


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parses <model_dir>/config.pbtxt; a missing file gives an empty config named after the folder."""
    path = model_dir / CONFIG_FILE
    config = mc.ModelConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), config)
        except text_format.ParseError as exc:
            raise ConfigError(f"{path}: not a valid ModelConfig in protobuf text format: {exc}") from None
    if config.name and config.name != model_dir.name:
        raise ConfigError(f"{path}: name '{config.name}' differs from its folder name '{model_dir.name}'")
    config.name = model_dir.name
    return config


def tensor_specs(tensors: list[mc.ModelInput] | list[mc.ModelOutput], kind: str, model: str) -> list[TensorSpec]:
    """Converts config inputs/outputs to TensorSpecs, rejecting unknown types and bad dims."""
    specs = []
    for tensor in tensors:
        type_name = mc.DataType.Name(tensor.data_type)
        if type_name not in CONFIG_TO_PROTOCOL:
            raise ConfigError(f"model '{model}' {kind} '{tensor.name}': data_type {type_name} is not supported")
        dims = tuple(int(d) for d in tensor.dims)
        if any(d < -1 or d == 0 for d in dims):
            raise ConfigError(f"model '{model}' {kind} '{tensor.name}': dims {list(dims)} must be positive or -1")
        reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
        optional = bool(getattr(tensor, "optional", False))
        specs.append(TensorSpec(tensor.name, CONFIG_TO_PROTOCOL[type_name], dims, optional, reshape))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"model '{model}' has duplicate {kind} names: {names}")
    return specs


def resolve_platform(config: mc.ModelConfig, model_dir: Path) -> str:
    """Returns the platform, from `platform`, `backend`, or the model file present."""
    if config.platform:
        if config.platform not in PLATFORMS:
            raise ConfigError(
                f"model '{config.name}': platform '{config.platform}' is not supported "
                f"(expected one of {PLATFORMS})"
            )
        return config.platform
    if config.backend:
        if config.backend not in BACKEND_PLATFORMS:
            raise ConfigError(
                f"model '{config.name}': backend '{config.backend}' is not supported "
                f"(expected one of {sorted(BACKEND_PLATFORMS)})"
            )
        return BACKEND_PLATFORMS[config.backend]
    for platform, filename in PLATFORM_FILES.items():
        if any(model_dir.glob(f"*/{filename}")):
            return platform
    raise ConfigError(
        f"model '{config.name}': no platform or backend in config.pbtxt and no model.onnx or model.pt found"
    )


def check_fields(config: mc.ModelConfig) -> None:
    """Refuses fields whose semantics infergate lacks; warns about other unsupported fields."""
    for descriptor, _ in config.ListFields():
        if descriptor.name in REFUSED_FIELDS:
            raise ConfigError(f"model '{config.name}': {descriptor.name} is not supported by infergate")
        if descriptor.name not in HONOURED_FIELDS:
            logger.warning("model '%s': config field '%s' is not supported and is ignored",
                           config.name, descriptor.name)
    batching = config.dynamic_batching
    if config.HasField("dynamic_batching"):
        if config.max_batch_size <= 0:
            raise ConfigError(f"model '{config.name}': dynamic_batching needs max_batch_size > 0")
        for size in batching.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                raise ConfigError(
                    f"model '{config.name}': preferred_batch_size {size} must be in 1..max_batch_size "
                    f"({config.max_batch_size})"
                )
        if batching.priority_levels and not 0 < batching.default_priority_level <= batching.priority_levels:
            raise ConfigError(
                f"model '{config.name}': default_priority_level {batching.default_priority_level} must be in "
                f"1..priority_levels ({batching.priority_levels})"
            )
    if config.max_batch_size < 0:
        raise ConfigError(f"model '{config.name}': max_batch_size {config.max_batch_size} must be >= 0")
    for group in config.instance_group:
        if group.count < 0:
            raise ConfigError(f"model '{config.name}': instance_group count {group.count} must be >= 0")


def build_spec(config: mc.ModelConfig, model_dir: Path) -> ModelSpec:
    """Validates a parsed config and returns its ModelSpec (inputs/outputs may still be empty)."""
    check_fields(config)
    platform = resolve_platform(config, model_dir)
    config.platform = platform
    return ModelSpec(
        name=config.name,
        platform=platform,
        max_batch_size=config.max_batch_size,
        inputs=tensor_specs(list(config.input), "input", config.name),
        outputs=tensor_specs(list(config.output), "output", config.name),
        config=config,
        parameters={key: value.string_value for key, value in config.parameters.items()},
        dynamic_batching=_dynamic_batching(config) if config.HasField("dynamic_batching") else None,
        instance_groups=tuple(InstanceGroupSpec(int(group.count), mc.ModelInstanceGroup.Kind.Name(group.kind),
                                                tuple(int(gpu) for gpu in group.gpus))
                              for group in config.instance_group),
        warmups=tuple(_warmup(warmup) for warmup in config.model_warmup),
    )


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicySpec:
    return QueuePolicySpec(int(policy.max_queue_size), int(policy.default_timeout_microseconds),
                           bool(policy.allow_timeout_override))


def _dynamic_batching(config: mc.ModelConfig) -> DynamicBatchingSpec:
    batching = config.dynamic_batching
    return DynamicBatchingSpec(
        max_queue_delay_us=int(batching.max_queue_delay_microseconds),
        preferred_batch_sizes=tuple(int(size) for size in batching.preferred_batch_size),
        priority_levels=int(batching.priority_levels) or 1,
        default_priority_level=int(batching.default_priority_level) or 1,
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        priority_queue_policies=tuple(sorted((int(level), _queue_policy(policy))
                                             for level, policy in batching.priority_queue_policy.items())),
    )


def _warmup(warmup: mc.ModelWarmup) -> WarmupSpec:
    inputs = tuple((name, WarmupInputSpec(protocol_type(data.data_type), tuple(int(d) for d in data.dims),
                                          data.WhichOneof("input_data_type") or "zero_data"))
                   for name, data in warmup.inputs.items())
    return WarmupSpec(warmup.name, int(warmup.batch_size), int(warmup.count), inputs)


def protocol_type(data_type: int) -> str:
    """The protocol name ("FP32", "BYTES") of a model_config.proto DataType value."""
    name = mc.DataType.Name(data_type)  # type: ignore[arg-type]
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")
