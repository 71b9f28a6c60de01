"""ONNX Runtime backend: CPU by default, CUDA/TensorRT providers when present and asked for."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from infergate.models.config import TensorSpec
from infergate.models.errors import ConfigError, InvalidInput
from infergate.models.runtime import Runtime, StopToken, requires_gpu, wants_gpu

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
        providers = self._providers()
        try:
            self.session = ort.InferenceSession(os.fspath(self.model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ConfigError(f"model '{self.spec.name}': onnxruntime cannot load {self.model_path}: {exc}") from None
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._string_inputs = {i.name for i in self.session.get_inputs() if i.type == "tensor(string)"}

    def _providers(self) -> list[str]:
        available = ort.get_available_providers()
        if wants_gpu(self.spec) and "CUDAExecutionProvider" in available:
            chosen = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available
                      and (p != "TensorrtExecutionProvider" or self.spec.parameters.get("enable_tensorrt") == "1")]
            return chosen + ["CPUExecutionProvider"]
        if requires_gpu(self.spec):
            raise ConfigError(
                f"model '{self.spec.name}': instance_group kind KIND_GPU, but onnxruntime has no CUDA provider "
                f"here (providers: {available}); use KIND_CPU or KIND_AUTO, or install onnxruntime-gpu"
            )
        return ["CPUExecutionProvider"]

    @property
    def device(self) -> str:
        return "cuda:0" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

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
        values = self.session.run(list(output_names), feeds, run_options)
        return dict(zip(output_names, values))

    def unload(self) -> None:
        del self.session
