"""The reference models that every server in a side-by-side comparison serves: mlp_small and mlp_large.

    python -m infergate.bench.reference_models OUT_DIR

ONNX opset 17, input INPUT0 FP32 [batch, 64], output OUTPUT0 FP32 [batch, 10] (softmax probabilities),
fixed seed: mlp_small is 64-256-10 and mlp_large 64-1024-1024-1024-10 (about 9 MB together). Results in
bench/results were measured on exactly these files, so the weights must not change.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

# Layer widths, input first. Built in this order from one generator: mlp_large's weights follow mlp_small's.
REFERENCE_MODELS = {"mlp_small": (64, 256, 10), "mlp_large": (64, 1024, 1024, 1024, 10)}
SEED = 0
OPSET = 17
IR_VERSION = 8  # pinned, not onnx's newest, so that the onnxruntime in every peer's venv reads the same file


def mlp(name: str, widths: tuple[int, ...], rng: np.random.Generator) -> onnx.ModelProto:
    """Gemm layers with ReLU between them and a softmax at the end; weights N(0, 1/fan_in), biases 0."""
    nodes, initializers, x = [], [], "INPUT0"
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        weights = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        initializers += [numpy_helper.from_array(weights, f"W{i}"),
                         numpy_helper.from_array(np.zeros(fan_out, np.float32), f"B{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [x + "r"]))
            x += "r"
    nodes.append(helper.make_node("Softmax", [x], ["OUTPUT0"], axis=1))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", widths[-1]])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_reference_models(out_dir: Path) -> list[Path]:
    """Writes OUT_DIR/<name>.onnx for every reference model; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    paths = []
    for name, widths in REFERENCE_MODELS.items():
        paths.append(out_dir / f"{name}.onnx")
        onnx.save(mlp(name, widths, rng), paths[-1])
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for path in write_reference_models(Path(args[0])):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
