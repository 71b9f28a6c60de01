"""A real infergate serving the models the load-test harness is tested on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from harness import ServerProcess, start_server
from modelgen import OPSET, classifier, slow, write

SLOW_ITERATIONS = 1000  # the slow model's Loop trips: about 10-15 ms a request here, run one at a time


def _variable_identity(path: Path) -> None:
    """INPUT0 FP32 [b, n] -> OUTPUT0: a second dimension ModelMetadata reports as -1."""
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "varlen",
                              [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def bench_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-repo")
    classifier(root / "classifier/1/model.onnx")
    write(root / "classifier/config.pbtxt", """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "LOGITS", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
""")
    # No batching and no queue limit: requests wait their turn, so the queue shows in open-loop latency.
    slow(root / "slow/1/model.onnx", iterations=SLOW_ITERATIONS)
    write(root / "slow/config.pbtxt", """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 1, 256 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 1, 256 ] } ]
""")
    _variable_identity(root / "varlen/1/model.onnx")
    write(root / "varlen/config.pbtxt", """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
""")
    return root


@pytest.fixture(scope="session")
def bench_server(bench_repository: Path) -> Iterator[ServerProcess]:
    proc = start_server("--model-repository", str(bench_repository))
    yield proc
    proc.stop()
