"""The runtime adapter every model backend implements, and the chooser by platform."""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.errors import ConfigError

logger = logging.getLogger(__name__)

# PyTorch's CPU build, as CI installs it: the torch extra, or a plain `pip install torch`, pulls a multi-GB CUDA one.
TORCH_CPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


class Runtime(abc.ABC):
    """One loaded model version. `predict` is blocking and runs in an executor thread."""

    def __init__(self, spec: ModelSpec, model_path: Path) -> None:
        self.spec = spec
        self.model_path = model_path

    @abc.abstractmethod
    def load(self) -> None:
        """Loads the model file; raises ConfigError with the reason if it cannot."""

    @abc.abstractmethod
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Returns (inputs, outputs) as the model file declares them, row dims only when batching."""

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Runs one batch: inputs by config name (batch dim first) -> the named outputs."""

    def interrupt(self, thread_id: int) -> bool:
        """Asks the batch running on that thread to stop (an execution past its timeout); returns whether this
        runtime can. The default cannot: the thread is left to finish while a new one takes its place."""
        return False

    def unload(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Releases the model; the default drops references and lets the GC free them."""

    @property
    def device(self) -> str:
        """Where it runs: "cpu" or "cuda:N"."""
        return "cpu"


def create_runtime(spec: ModelSpec, model_path: Path) -> Runtime:
    """Returns the runtime for spec.platform (imported lazily: torch is an optional extra)."""
    if spec.platform == "onnxruntime_onnx":
        from infergate.models.onnx_runtime import OnnxRuntime

        return OnnxRuntime(spec, model_path)
    if spec.platform == "pytorch_libtorch":
        try:
            from infergate.models.torch_runtime import TorchRuntime
        except ImportError as exc:
            raise ConfigError(
                f"model '{spec.name}' needs PyTorch, which is not installed ({exc}); "
                f"install its CPU build with: {TORCH_CPU_INSTALL}"
            ) from None
        return TorchRuntime(spec, model_path)
    raise ConfigError(f"model '{spec.name}': platform '{spec.platform}' has no runtime")


def wants_gpu(spec: ModelSpec) -> bool:
    """True when the config's instance groups ask for a GPU (KIND_GPU), or allow one (KIND_AUTO)."""
    kinds = {group.kind for group in spec.instance_groups} or {"KIND_AUTO"}
    return bool(kinds & {"KIND_GPU", "KIND_AUTO"})


def requires_gpu(spec: ModelSpec) -> bool:
    return any(group.kind == "KIND_GPU" for group in spec.instance_groups)


def check_signature(spec: ModelSpec, kind: str, declared: list[TensorSpec], actual: list[TensorSpec]) -> None:
    """Raises ConfigError when the config's tensors disagree with the model file's."""
    by_name = {t.name: t for t in actual}
    for tensor in declared:
        found = by_name.get(tensor.name)
        if found is None:
            raise ConfigError(
                f"model '{spec.name}': config {kind} '{tensor.name}' is not in the model file "
                f"(its {kind}s are {sorted(by_name)})"
            )
        if found.datatype != tensor.datatype:
            raise ConfigError(
                f"model '{spec.name}': config {kind} '{tensor.name}' has data type {tensor.datatype}, "
                f"the model file has {found.datatype}"
            )
        model_dims = tensor.reshape if tensor.reshape is not None else tensor.dims
        if len(found.dims) != len(model_dims) or any(
            a != -1 and b != -1 and a != b for a, b in zip(found.dims, model_dims)
        ):
            raise ConfigError(
                f"model '{spec.name}': config {kind} '{tensor.name}' has dims {list(model_dims)}, "
                f"the model file has {list(found.dims)} (per row, without the batch dim)"
            )
