"""Builds the small, real ONNX and TorchScript models the tests serve (deterministic)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
# Datatypes the identity_all model passes through: (input name, ONNX type, config type).
IDENTITY_TYPES = [
    ("BOOL", TensorProto.BOOL), ("UINT8", TensorProto.UINT8), ("INT8", TensorProto.INT8),
    ("INT32", TensorProto.INT32), ("INT64", TensorProto.INT64), ("FP16", TensorProto.FLOAT16),
    ("FP32", TensorProto.FLOAT), ("FP64", TensorProto.DOUBLE), ("BYTES", TensorProto.STRING),
]


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def classifier(path: Path, n_in: int = 16, n_hidden: int = 32, n_out: int = 4, seed: int = 1) -> None:
    """INPUT0 FP32 [b, n_in] -> PROBS (softmax) and LOGITS, FP32 [b, n_out]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((n_in, n_hidden)).astype(np.float32), "W0"),
             numpy_helper.from_array(rng.standard_normal(n_hidden).astype(np.float32), "B0"),
             numpy_helper.from_array(rng.standard_normal((n_hidden, n_out)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "B1")]
    nodes = [helper.make_node("Gemm", ["INPUT0", "W0", "B0"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "W1", "B1"], ["LOGITS"]),
             helper.make_node("Softmax", ["LOGITS"], ["PROBS"], axis=1)]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["batch", n_out]),
         helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["batch", n_out])], inits)
    _save(helper.make_model(graph, opset_imports=OPSET), path)


def add_sub(path: Path, batched: bool = True) -> None:
    """INPUT0, INPUT1 INT32 [b, 4] -> OUTPUT0 = sum, OUTPUT1 = difference (Triton's 'simple')."""
    dims: list[str | int] = ["batch", 4] if batched else [4]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, dims) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.INT32, dims) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    _save(helper.make_model(helper.make_graph(nodes, "add_sub", inputs, outputs), opset_imports=OPSET), path)


def identity_all(path: Path) -> None:
    """One Identity per datatype: IN_<TYPE> [b, 3] -> OUT_<TYPE>."""
    inputs, outputs, nodes = [], [], []
    for name, onnx_type in IDENTITY_TYPES:
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    _save(helper.make_model(helper.make_graph(nodes, "identity_all", inputs, outputs), opset_imports=OPSET), path)


def tanh_loop_body(width: int) -> onnx.GraphProto:
    """The body of a Loop that maps x [batch, width] to tanh(x @ W) each trip (W: an outer initializer)."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "W"], ["m"]), helper.make_node("Tanh", ["m"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["batch", width])])


def slow(path: Path, iterations: int = 6000, width: int = 256) -> None:
    """INPUT0 FP32 [b, width] -> OUTPUT0: `iterations` MatMul+Tanh rounds in a Loop (a slow model)."""
    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "W")
    body = tanh_loop_body(width)
    consts = [numpy_helper.from_array(np.array(iterations, np.int64), "trips"),
              numpy_helper.from_array(np.array(True), "cond"), weight]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "INPUT0"], ["OUTPUT0"], body=body)], "slow",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])], consts)
    _save(helper.make_model(graph, opset_imports=OPSET), path)


def torch_linear(path: Path) -> None:
    """TorchScript: INPUT__0 FP32 [b, 16] -> (OUTPUT__0 = softmax, OUTPUT__1 = logits), 4 classes."""
    import torch

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.fc(x)
            return torch.softmax(logits, dim=1), logits

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is the format
        # Triton's pytorch_libtorch platform serves.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Linear().eval()).save(str(path))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_test_repository(root: Path, with_torch: bool) -> Path:
    """A repository with every kind of model the server tests need, plus two broken ones."""
    classifier(root / "classifier/1/model.onnx")
    write(root / "classifier/config.pbtxt", """
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "LOGITS", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
""")
    add_sub(root / "add_sub/1/model.onnx")
    add_sub(root / "add_sub/2/model.onnx")
    write(root / "add_sub/config.pbtxt", """
max_batch_size: 16
version_policy: { all { } }
dynamic_batching { }
""")  # inputs/outputs and platform completed from the model file
    add_sub(root / "add_sub_nobatch/1/model.onnx", batched=False)
    write(root / "add_sub_nobatch/config.pbtxt", """
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 4 ] }, { name: "INPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 4 ] },
          { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
""")
    identity_all(root / "identity_all/1/model.onnx")
    types = "\n".join(
        f'  {{ name: "IN_{n}", data_type: TYPE_{"STRING" if n == "BYTES" else n}, dims: [ 3 ] }},'
        for n, _ in IDENTITY_TYPES).rstrip(",")
    write(root / "identity_all/config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
{types}
]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
""")
    slow(root / "slow/1/model.onnx")
    write(root / "slow/config.pbtxt", """
platform: "onnxruntime_onnx"
max_batch_size: 1
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 256 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 256 ] } ]
dynamic_batching {
  default_queue_policy { max_queue_size: 2 }
  priority_levels: 2
  default_priority_level: 2
}
""")
    if with_torch:
        torch_linear(root / "torch_linear/1/model.pt")
        write(root / "torch_linear/config.pbtxt", """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 4 ] },
          { name: "OUTPUT__1", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
""")
    write(root / "broken_config/config.pbtxt", "max_batch_size: eight\n")
    (root / "broken_config/1").mkdir(parents=True, exist_ok=True)
    write(root / "missing_file/config.pbtxt", 'platform: "onnxruntime_onnx"\nmax_batch_size: 1\n')
    (root / "missing_file/1").mkdir(parents=True, exist_ok=True)
    return root


def nan_rejecting(root: Path, name: str, n_in: int = 4, max_batch_size: int = 12,
                  max_queue_delay_us: int = 10_000_000) -> tuple[np.ndarray, np.ndarray]:
    """A fault-injection model: a classifier behind a declared feature pipeline that standardizes INPUT0
    with no imputer, so a NaN in any row is rejected at that row of the batch (NonFiniteOutputError).

    Batches go only when full (or after `max_queue_delay_us`; the adaptive delay is off), so concurrent
    requests that add up to max_batch_size rows form one batch. Returns the pipeline's (mean, scale)."""
    from infergate import kernels

    mean, scale = np.linspace(-1.0, 1.0, n_in), np.linspace(0.5, 2.0, n_in)
    classifier(root / f"{name}/1/model.onnx", n_in=n_in)
    write(root / f"{name}/config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
parameters {{ key: "adaptive_queue_delay" value: {{ string_value: "off" }} }}
""")
    standardize = kernels.Standardize(tuple(range(n_in)), mean=tuple(mean), scale=tuple(scale))
    kernels.Pipeline([standardize], n_in).save(root / name)
    return mean, scale


HANG_TRIPS = 1e9  # a value in INPUT0's column 0 that makes its batch run ~forever (until interrupted)


def hanging(root: Path, name: str, max_batch_size: int = 8, parameters: dict[str, str] | None = None) -> None:
    """A fault-injection model: INPUT0 FP32 [b, 4] -> OUTPUT0 = INPUT0 and OUTPUT1 = sqrt(INPUT0).

    The batch runs a Loop of max(column 0) trips of a tiny MatMul: 0 trips for ordinary rows (OUTPUT0 is
    the input unchanged), HANG_TRIPS for a row marked to hang; ONNX Runtime's RunOptions.terminate can stop it.
    A negative value gives NaN in that row of OUTPUT1 only (a model that returns NaN on marked rows)."""
    width = 4
    body = tanh_loop_body(width)
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32), "W")
    consts = [numpy_helper.from_array(np.array(True), "cond"), weight,
              numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [
        helper.make_node("Slice", ["INPUT0", "zero", "one", "one"], ["marks"]),  # column 0
        helper.make_node("ReduceMax", ["marks"], ["most"], keepdims=0),
        helper.make_node("Cast", ["most"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "cond", "INPUT0"], ["OUTPUT0"], body=body),
        helper.make_node("Sqrt", ["INPUT0"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(
        nodes, "hanging", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("OUTPUT1", TensorProto.FLOAT, ["batch", width])], consts)
    _save(helper.make_model(graph, opset_imports=OPSET), root / f"{name}/1/model.onnx")
    extra = "".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
                    for key, value in (parameters or {}).items())
    write(root / f"{name}/config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
parameters {{ key: "adaptive_queue_delay" value: {{ string_value: "off" }} }}
{extra}""")


def hanging_torchscript(root: Path, name: str, parameters: dict[str, str] | None = None) -> None:
    """The fault model as TorchScript, which cannot be interrupted: INPUT__0 FP32 [b, 4] -> OUTPUT__0, tanh applied
    max(column 0) times (0 for ordinary rows, which come back unchanged; HANG_TRIPS runs ~forever)."""
    import torch

    class Hang(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            for _ in range(int(x[:, 0].max().item())):
                y = torch.tanh(y)
            return y

    path = root / f"{name}/1/model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Hang().eval()).save(str(path))
    extra = "".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
                    for key, value in (parameters or {}).items())
    write(root / f"{name}/config.pbtxt", """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
parameters { key: "inline_execution" value: { string_value: "off" } }
""" + extra)
