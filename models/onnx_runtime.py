"""ONNX Runtime backend: CPU by default, CUDA/TensorRT providers when present and asked for."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from infergate.models.config import TensorSpec
from infergate.models.errors import ConfigError, InvalidInput
from infergate.models.runtime import Runtime, StopToken, gpu_device_id, requires_gpu, wants_gpu

logger = logging.getLogger(__name__)

# ONNX tensor element type strings -> protocol datatypes.
ORT_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(string)": "BYTES",
}
# One intra-op thread per instance by default: the batcher already fills the cores with
# whole batches, and ORT's own spinning thread pool would fight gRPC and the batcher for
# the same cores. Raise it per model with parameters { key: "intra_op_thread_count" ... }.
DEFAULT_INTRA_OP_THREADS = 1
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # in ORT's order of preference


def choose_providers(available: Sequence[str], is_gpu_wanted: bool, is_gpu_required: bool, is_tensorrt: bool,
                     device_id: int, model: str) -> list[str | tuple[str, dict[str, str]]]:
    """The execution providers a session is made with, from those this onnxruntime build has: CUDA (TensorRT
    first when the model's parameter enable_tensorrt is "1") on `device_id` when the config allows a GPU, then
    the CPU for the nodes they lack. Raises ConfigError for KIND_GPU where no CUDA provider exists."""
    if is_gpu_wanted and "CUDAExecutionProvider" in available:
        options = {"device_id": str(device_id)}
        chosen = [name for name in GPU_PROVIDERS if name in available and (name != GPU_PROVIDERS[0] or is_tensorrt)]
        return [*((name, options) for name in chosen), "CPUExecutionProvider"]
    if is_gpu_required:
        raise ConfigError(
            f"model '{model}': instance_group kind KIND_GPU, but onnxruntime has no CUDA provider here (providers: "
            f"{list(available)}); use KIND_CPU or KIND_AUTO, or install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"]


def io_binding_device(session_providers: Sequence[str], mode: str, has_strings: bool) -> str | None:
    """Where I/O binding keeps a batch, or None for plain run(): on a CUDA session ("auto", the default, or "on")
    each batch goes to the device once and its outputs come back once, with no staging copies; "on" also binds on a
    CPU session (the same code path, testable without a GPU); "off", or string tensors (host objects), never."""
    if mode == "off" or has_strings:
        return None
    if any(name in GPU_PROVIDERS for name in session_providers):
        return "cuda"
    return "cpu" if mode == "on" else None


def _as_text(name: str, value: np.ndarray) -> np.ndarray:
    """ONNX string tensors hold UTF-8 text: BYTES elements are decoded, and refused if not UTF-8."""
    flat = value.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        try:
            out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input '{name}' element {i} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "ONNX string tensors hold UTF-8 text"
            ) from None
    return out.reshape(value.shape)


class OnnxRuntime(Runtime):
    session: ort.InferenceSession
    is_interruptible = True  # RunOptions.terminate ends a run between kernels, also inside a Loop

    def load(self) -> None:
        options = ort.SessionOptions()
        params = self.spec.parameters
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", DEFAULT_INTRA_OP_THREADS))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", 1))
        # Spinning wastes a core between batches that the gRPC threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "0"))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spec = self.spec
        self._device_id = gpu_device_id(spec)  # once: it warns about a config it serves on one device
        providers = choose_providers(ort.get_available_providers(), wants_gpu(spec), requires_gpu(spec),
                                     params.get("enable_tensorrt") == "1", self._device_id, spec.name)
        try:
            self.session = ort.InferenceSession(os.fspath(self.model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ConfigError(f"model '{self.spec.name}': onnxruntime cannot load {self.model_path}: {exc}") from None
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}
        has_strings = bool(self._string_inputs) or any(o.type == "tensor(string)" for o in self.session.get_outputs())
        mode = params.get("io_binding", "auto")
        if mode not in ("auto", "on", "off"):
            raise ConfigError(f"model '{spec.name}': parameter io_binding is '{mode}', expected auto, on or off")
        self._binding_device = io_binding_device(self.session.get_providers(), mode, has_strings)
        logger.info("model '%s': onnxruntime providers %s%s", spec.name, self.session.get_providers(),
                    f", I/O binding on {self._binding_device}" if self._binding_device else "")

    @property
    def device(self) -> str:
        on_gpu = any(name in GPU_PROVIDERS for name in self.session.get_providers())
        return f"cuda:{self._device_id}" if on_gpu else "cpu"

    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        batched = self.spec.max_batch_size > 0

        def spec_of(arg: ort.NodeArg) -> TensorSpec:
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in arg.shape]
            if batched:
                dims = dims[1:]
            return TensorSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), tuple(dims))

        return [spec_of(a) for a in self.session.get_inputs()], [spec_of(a) for a in self.session.get_outputs()]

    def predict(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str],
                stop: StopToken | None = None) -> dict[str, np.ndarray]:
        feeds = {name: value for name, value in inputs.items() if name in self._input_names}
        for name in self._string_inputs & feeds.keys():
            feeds[name] = _as_text(name, feeds[name])
        run_options = None
        if stop is not None:
            # A fresh RunOptions per call (0.4 us): a stop that lands after this call ends touches nothing else.
            run_options = ort.RunOptions()
            stop.bind(lambda: setattr(run_options, "terminate", True))
        if self._binding_device is None:
            values = self.session.run(list(output_names), feeds, run_options)
            return dict(zip(output_names, values))
        # One copy of each input to the device as the run begins, one copy of each output back after it.
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in output_names:
            binding.bind_output(name, self._binding_device, self._device_id if self._binding_device == "cuda" else 0)
        if run_options is None:
            self.session.run_with_iobinding(binding)
        else:
            self.session.run_with_iobinding(binding, run_options)
        return dict(zip(output_names, binding.copy_outputs_to_cpu()))

    def unload(self) -> None:
        del self.session
