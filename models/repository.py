"""The model repository on disk: Triton's layout, version policy, loading and warm-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from infergate.models.config import ModelSpec, TensorSpec, build_spec, read_config
from infergate.models.datatypes import NUMPY_DTYPES, zeros
from infergate.models.errors import ConfigError, ModelNotFound
from infergate.models.features import FeatureStage, build_stage, find_declaration
from infergate.models.runtime import Runtime, check_signature, create_runtime
from infergate.proto import model_config_pb2 as mc

logger = logging.getLogger(__name__)

# Warm-up runs of the default warm-up (when the config has no model_warmup).
DEFAULT_WARMUP_RUNS = 5


@dataclass(slots=True)
class LoadedVersion:
    """One model version, loaded and warmed, ready to serve."""

    spec: ModelSpec
    version: str
    runtime: Runtime
    load_s: float  # wall time to load and warm up
    warm_batch_s: float  # fastest warm-up run: the compute (and transform) time of one (default: full) batch
    features: FeatureStage | None = None  # the model's declared feature transforms
    # Cheapest compute per row over the warm-up runs (the best batching it saw): what a cascade's saving is
    # measured against, for its last stage (inf when the model has no warm-up).
    warm_row_s: float = float("inf")


def list_models(repo: Path) -> list[str]:
    """Names of the model folders in the repository (hidden folders skipped)."""
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} is not a directory")
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def available_versions(model_dir: Path) -> list[int]:
    """Numeric version folders, ascending."""
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def select_versions(policy: mc.ModelVersionPolicy, versions: list[int], model: str) -> list[int]:
    """Applies Triton's version_policy (default: latest 1) to the versions on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return versions
    if choice == "specific":
        wanted = sorted(int(v) for v in policy.specific.versions)
        missing = [v for v in wanted if v not in versions]
        if missing:
            raise ConfigError(f"model '{model}': version_policy names versions {missing}, not found on disk "
                              f"(found {versions})")
        return wanted
    count = policy.latest.num_versions if choice == "latest" else 1
    return versions[-max(count, 1):]


def resolve_signature(spec: ModelSpec, runtime: Runtime) -> None:
    """Fills inputs/outputs the config left out from the model file, and checks the rest."""
    inputs, outputs = runtime.signature()
    if not spec.inputs:
        spec.inputs = inputs
        spec.config.input.extend(config_tensor(mc.ModelInput(), t) for t in inputs)
    else:
        check_signature(spec, "input", spec.inputs, inputs)
    if not spec.outputs:
        spec.outputs = outputs
        spec.config.output.extend(config_tensor(mc.ModelOutput(), t) for t in outputs)
    else:
        check_signature(spec, "output", spec.outputs, outputs)


_Tensor = TypeVar("_Tensor", mc.ModelInput, mc.ModelOutput)


def config_tensor(message: _Tensor, tensor: TensorSpec) -> _Tensor:
    message.name = tensor.name
    message.data_type = mc.DataType.Value(  # type: ignore[assignment]
        "TYPE_STRING" if tensor.datatype == "BYTES" else f"TYPE_{tensor.datatype}")
    message.dims.extend(tensor.dims)
    return message


def warmup_batches(spec: ModelSpec) -> list[tuple[dict[str, np.ndarray], int]]:
    """The (inputs, repeat count) batches to run before a model serves: Triton's
    model_warmup when configured, else one full batch of zeros."""
    batches = []
    rng = np.random.default_rng(0)
    for warmup in spec.warmups:
        rows = max(warmup.batch_size, 1)
        inputs = {}
        for name, data in warmup.inputs:
            dtype = NUMPY_DTYPES[data.datatype]
            shape = ((rows,) if spec.max_batch_size > 0 else ()) + data.dims
            if data.source == "random_data" and dtype.kind in "iuf":
                inputs[name] = rng.random(shape).astype(dtype)
            elif data.source == "input_data_file":
                raise ConfigError(f"model '{spec.name}': model_warmup '{warmup.name}' input_data_file is not supported")
            else:
                inputs[name] = zeros(shape, data.datatype)
        batches.append((inputs, max(warmup.count, 1)))
    if batches or not spec.inputs:
        return batches
    rows = max(spec.max_batch_size, 1)
    inputs = {}
    for tensor in spec.inputs:
        dims = tuple(1 if d == -1 else d for d in (tensor.dims))
        shape = ((rows,) if spec.max_batch_size > 0 else ()) + dims
        inputs[tensor.name] = zeros(shape, tensor.datatype)
    return [(inputs, DEFAULT_WARMUP_RUNS)]



def load_model(repo: Path, name: str) -> list[LoadedVersion]:
    """Loads every version of a model that its version policy selects (blocking)."""
    model_dir = repo / name
    if not model_dir.is_dir():
        raise ModelNotFound(name)
    versions = available_versions(model_dir)
    if not versions:
        raise ConfigError(f"model '{name}': no numeric version folder (e.g. {model_dir}/1/) found")
    config = read_config(model_dir)
    loaded = []
    for version in select_versions(config.version_policy, versions, name):
        start = time.perf_counter()
        spec = build_spec(_copy(config), model_dir)
        path = model_dir / str(version) / spec.model_filename
        if not path.exists():
            raise ConfigError(f"model '{name}' version {version}: model file {path} not found")
        runtime = create_runtime(spec, path)
        runtime.load()
        resolve_signature(spec, runtime)
        declaration = find_declaration(spec, model_dir)
        features = build_stage(spec, *declaration) if declaration else None
        output_names = [t.name for t in spec.outputs]
        fastest_s = row_s = float("inf")
        for inputs, count in warmup_batches(spec):
            rows = _rows_of(spec, inputs)
            for _ in range(count):
                run_start = time.perf_counter()
                runtime.predict(_reshaped(spec, inputs), output_names)
                run_s = time.perf_counter() - run_start
                fastest_s, row_s = min(fastest_s, run_s), min(row_s, run_s / rows)
        if features is not None:
            transform_s = features.warm_up(max(spec.max_batch_size, 1))
            fastest_s += transform_s
            row_s += transform_s / max(spec.max_batch_size, 1)
            _show_client_inputs(spec, features)
        loaded.append(LoadedVersion(spec, str(version), runtime, time.perf_counter() - start, fastest_s, features,
                                    row_s))
        logger.info("loaded model '%s' version %s (%s on %s%s) in %.2f s", name, version, spec.platform,
                    runtime.device, ", with feature transforms" if features else "", loaded[-1].load_s)
    return loaded


def _rows_of(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> int:
    """Rows of a warm-up batch: its leading dimension when the model batches, else one."""
    if spec.max_batch_size <= 0 or not inputs:
        return 1
    return max(int(next(iter(inputs.values())).shape[0]), 1)


def _show_client_inputs(spec: ModelSpec, features: FeatureStage) -> None:
    """From here on the spec describes what clients send (ModelMetadata, ModelConfig, request checks):
    the raw inputs of the feature transforms in place of the model inputs they feed."""
    spec.inputs = list(features.client_inputs)
    del spec.config.input[:]
    spec.config.input.extend(config_tensor(mc.ModelInput(), t) for t in spec.inputs)


def _reshaped(spec: ModelSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Applies config `reshape` to inputs (the model sees the reshaped row shape)."""
    for tensor in spec.inputs:
        if tensor.reshape is not None and tensor.name in inputs:
            value = inputs[tensor.name]
            lead = value.shape[:1] if spec.max_batch_size > 0 else ()
            inputs[tensor.name] = value.reshape(lead + tensor.reshape)
    return inputs


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy
