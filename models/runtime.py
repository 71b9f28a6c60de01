"""The runtime adapter every model backend implements, and the chooser by platform."""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.errors import ConfigError

logger = logging.getLogger(__name__)

# PyTorch's CPU build, as CI installs it: the torch extra, or a plain `pip install torch`, pulls a multi-GB CUDA one.
TORCH_CPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


class ExecutionStopped(RuntimeError):
    """Raised in a runtime's thread for an execution told to stop (past its timeout) before its call began."""


class StopToken:
    """One execution's stop signal (--model-execution-timeout-s): the event loop calls stop() when it runs past
    its timeout, and the runtime running it hears of it however far it has got, before its call or during it.

    Per execution, not per thread: a stop that comes late can never reach the next batch on the same thread."""

    __slots__ = ("is_stopped", "_on_stop")

    def __init__(self) -> None:
        self.is_stopped = False
        self._on_stop: Callable[[], None] | None = None

    def stop(self) -> None:
        """On the loop: marks the execution stopped and stops the runtime call in progress, if one is bound."""
        self.is_stopped = True
        on_stop = self._on_stop
        if on_stop is not None:
            on_stop()

    def bind(self, on_stop: Callable[[], None]) -> None:
        """In the runtime's thread, just before its call: how to stop that call. Raises ExecutionStopped if the
        execution was stopped already. (stop() sets the flag before it reads the hook, bind() sets the hook
        before it reads the flag: whichever runs second sees the other's write, so no stop is lost.)"""
        self._on_stop = on_stop
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        """In the runtime's thread: ExecutionStopped if the execution was stopped (a runtime that cannot be
        interrupted checks this on entry)."""
        if self.is_stopped:
            raise ExecutionStopped("the execution was stopped before it began (it ran past its timeout)")


class Runtime(abc.ABC):
    """One loaded model version. `predict` is blocking and runs in an executor thread."""

    # Whether predict stops its call when its StopToken is stopped (ONNX Runtime: between kernels). One that
    # cannot leaves its thread running past the timeout while a new thread takes its instance's place.
    is_interruptible: ClassVar[bool] = False

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
    def predict(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str],
                stop: StopToken | None = None) -> dict[str, np.ndarray]:
        """Runs one batch: inputs by config name (batch dim first) -> the named outputs. `stop` is the
        execution's stop signal (None at warm-up); a runtime that is not interruptible checks it on entry."""

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


def gpu_device_id(spec: ModelSpec) -> int:
    """The CUDA device a GPU instance runs on: the first of its instance group's `gpus`, else device 0.

    One device per model: instances spread over several GPUs need one runtime per device, which is not built yet;
    a config that lists more is served on the first, and load says so."""
    for group in spec.instance_groups:
        if group.kind in ("KIND_GPU", "KIND_AUTO") and group.gpus:
            if len(group.gpus) > 1 or any(g.gpus and g.gpus != group.gpus for g in spec.instance_groups):
                logger.warning("model '%s': instance_group gpus %s: every instance runs on GPU %d (one device per "
                               "model for now)", spec.name, [g.gpus for g in spec.instance_groups], group.gpus[0])
            return group.gpus[0]
    return 0


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
