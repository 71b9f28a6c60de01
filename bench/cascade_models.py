"""The cascade benchmarks' trained models: scikit-learn fits written as hand-built ONNX dense graphs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

OPSET = 17  # default-domain opset, as models/examples.py and bench/reference_models.py
IR_VERSION = 8  # pinned low, so every onnxruntime the benchmarks meet reads the files
INPUT = "INPUT0"  # FP32 [batch, features]
PROBABILITIES = "OUTPUT0"  # FP32 [batch, classes], softmax of LOGITS
LOGITS = "LOGITS"  # FP32 [batch, classes], what temperature scaling divides
MAX_BATCH_SIZE = 64  # config.pbtxt max_batch_size
MAX_QUEUE_DELAY_US = 500  # dynamic batching wait for a fuller batch, as the example models
LOGISTIC_INVERSE_L2 = 1.0  # LogisticRegression C (scikit-learn's default)
LOGISTIC_MAX_ITERATIONS = 2000  # L-BFGS cap; the standardised datasets converge well below it
MLP_LEARNING_RATE = 1e-3  # Adam step size (scikit-learn's default)

FloatArray = npt.NDArray[np.float32]
Layer = tuple[FloatArray, FloatArray]  # (weights [fan_in, fan_out], bias [fan_out])


def fold_standardiser(layers: Sequence[Layer], mean: npt.ArrayLike, scale: npt.ArrayLike) -> list[Layer]:
    """The same network taking raw features: (x - mean) / scale folded into the first layer's weights and bias."""
    mean64, scale64 = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    weights, bias = (np.asarray(a, np.float64) for a in layers[0])
    folded = weights / scale64[:, None]
    first = (folded.astype(np.float32), (bias - mean64 @ folded).astype(np.float32))
    return [first, *layers[1:]]


def safe_scale(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Column standard deviations, 1 where a column is constant (digits' always-blank corner pixels)."""
    std = np.asarray(x, np.float64).std(axis=0)
    return np.where(std > 0, std, 1.0)


def dense_onnx(name: str, layers: Sequence[Layer]) -> onnx.ModelProto:
    """Gemm layers with ReLU between them; outputs LOGITS and their softmax OUTPUT0, batch dimension symbolic."""
    nodes, initializers, x = [], [], INPUT
    for i, (weights, bias) in enumerate(layers):
        initializers += [numpy_helper.from_array(np.asarray(weights, np.float32), f"W{i}"),
                         numpy_helper.from_array(np.asarray(bias, np.float32), f"B{i}")]
        out = LOGITS if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"B{i}"], [out]))
        x = out
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [x + "r"]))
            x += "r"
    nodes.append(helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1))
    features, classes = layers[0][0].shape[0], layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", classes]) for n in (PROBABILITIES, LOGITS)],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="infergate-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def config_text(name: str, features: int, classes: int) -> str:
    """config.pbtxt of a dense classifier: one CPU instance with dynamic batching."""
    outputs = ", ".join(f'{{ name: "{n}", data_type: TYPE_FP32, dims: [ {classes} ] }}'
                        for n in (PROBABILITIES, LOGITS))
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
            f'input [ {{ name: "{INPUT}", data_type: TYPE_FP32, dims: [ {features} ] }} ]\n'
            f"output [ {outputs} ]\ninstance_group [ {{ count: 1, kind: KIND_CPU }} ]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n")


def write_model(repository: Path, name: str, layers: Sequence[Layer]) -> Path:
    """Writes REPOSITORY/NAME/1/model.onnx and its config.pbtxt; returns the model's folder."""
    folder = repository / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(dense_onnx(name, layers), folder / "1" / "model.onnx")
    features, classes = layers[0][0].shape[0], layers[-1][0].shape[1]
    (folder / "config.pbtxt").write_text(config_text(name, features, classes), encoding="utf-8")
    return folder


def logits_of(layers: Sequence[Layer], x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The network's logits in NumPy, the reference the ONNX graph must agree with."""
    h = np.asarray(x, np.float64)
    for i, (weights, bias) in enumerate(layers):
        h = h @ np.asarray(weights, np.float64) + np.asarray(bias, np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def train_logistic(x: npt.ArrayLike, y: npt.ArrayLike, classes: int) -> list[Layer]:
    """Multinomial logistic regression on standardised features, as one layer taking raw features."""
    from sklearn.linear_model import LogisticRegression

    x64 = np.asarray(x, np.float64)
    mean, scale = x64.mean(axis=0), safe_scale(x64)
    fitted = LogisticRegression(C=LOGISTIC_INVERSE_L2, max_iter=LOGISTIC_MAX_ITERATIONS).fit((x64 - mean) / scale, y)
    weights, bias = np.asarray(fitted.coef_.T), np.asarray(fitted.intercept_)
    if classes == 2:  # scikit-learn keeps one column for two classes: logits (0, z) give the same softmax
        weights, bias = np.hstack([np.zeros_like(weights), weights]), np.concatenate([[0.0], bias])
    return fold_standardiser([(weights.astype(np.float32), bias.astype(np.float32))], mean, scale)


def train_mlp(x: npt.ArrayLike, y: npt.ArrayLike, classes: int, hidden: tuple[int, ...], epochs: int,
              seed: int) -> list[Layer]:
    """A ReLU MLP (Adam, fixed seed) on standardised features, as layers taking raw features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x64 = np.asarray(x, np.float64)
    mean, scale = x64.mean(axis=0), safe_scale(x64)
    net = MLPClassifier(hidden_layer_sizes=hidden, max_iter=epochs, learning_rate_init=MLP_LEARNING_RATE,
                        random_state=seed)
    with warnings.catch_warnings():
        # A fixed epoch budget is the point: the large model's cost is what the bench is about, not convergence.
        warnings.simplefilter("ignore", ConvergenceWarning)
        net.fit((x64 - mean) / scale, y)
    layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in
              zip(net.coefs_, net.intercepts_, strict=True)]
    if classes == 2:  # a logistic output unit: logits (0, z) give the same probabilities under softmax
        weights, bias = layers[-1]
        layers[-1] = (np.hstack([np.zeros_like(weights), weights]), np.concatenate([np.zeros(1, np.float32), bias]))
    return fold_standardiser(layers, mean, scale)
