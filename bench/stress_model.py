"""The stress kit's model: an ONNX model with a few ms of compute per row, its repository, and its numpy reference.

OUTPUT0 = V^T h, where h is the state after TRIPS trips of h <- tanh(h / 2 + x U), started at x U. Each trip is
elementwise over WIDTH values per row, so a batch costs about rows x the cost of one row: capacity does not
depend on how batches happen to form, and 0.5x or 3x of it means the same at any batch size.

The map is a contraction (|d/dh tanh(h / 2 + d)| <= 1/2), so after k trips the state is within 2^-k of its fixed
point. The reference iterates until the state stops moving (at most REFERENCE_MAX_TRIPS, 2^-40 ~ 1e-12, far below
float32's resolution) instead of all TRIPS: the same answer as the model's to float32 rounding (7e-7 at most,
measured), at ~1.4 ms a row against the server's ~8, so checking every answer of a run costs the client a
fraction of what the server spent computing them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MODEL = "stress"
INPUT, OUTPUT = "INPUT0", "OUTPUT0"
N_IN = 16  # input features a row
WIDTH = 16384  # elementwise state a row: the work of one trip
N_OUT = 8  # output values a row
TRIPS = 1000  # Loop trips: about 8 ms a row on this host's cores with one ORT thread (~120 rows/s)
MAX_BATCH_SIZE = 4
MAX_QUEUE_DELAY_US = 1000  # how long a partial batch waits for more rows
MAX_QUEUE_SIZE = 2  # requests waiting beyond the running batch: an admitted one waits for it and 2 rows
SEED = 12
REFERENCE_MAX_TRIPS = 40  # the reference's bound: 2^-40 from the fixed point
REFERENCE_TOLERANCE = 1e-7  # the reference stops once no value moves by more than this in a trip
REFERENCE_CHUNK_ROWS = 256  # rows the reference computes at once (bounds its memory: 256 x WIDTH x 4 B = 16 MiB)
ANSWER_ATOL = 1e-4  # a served answer matches the reference within this (float32 sums over WIDTH terms)
ANSWER_RTOL = 1e-4


def weights(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """U [N_IN, WIDTH] and V [WIDTH, N_OUT], scaled so each output is O(1) and distinct inputs differ by O(1)."""
    rng = np.random.default_rng(seed)
    u = (rng.standard_normal((N_IN, WIDTH)) / np.sqrt(N_IN)).astype(np.float32)
    v = (rng.standard_normal((WIDTH, N_OUT)) / np.sqrt(WIDTH)).astype(np.float32)
    return u, v


def build_onnx(path: Path, trips: int = TRIPS, seed: int = SEED) -> None:
    """Writes the model (opset 17, IR 8) to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    u, v = weights(seed)
    row: list[str | int] = ["batch", WIDTH]
    body = helper.make_graph(
        [helper.make_node("Mul", ["h_in", "half"], ["m"]), helper.make_node("Add", ["m", "drive"], ["a"]),
         helper.make_node("Tanh", ["a"], ["h_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "trip",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, row)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, row)])
    constants = [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
                 numpy_helper.from_array(np.array(True), "cond"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "half"),
                 numpy_helper.from_array(u, "U"), numpy_helper.from_array(v, "V")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT, "U"], ["drive"]),
         helper.make_node("Loop", ["trips", "cond", "drive"], ["h"], body=body),
         helper.make_node("MatMul", ["h", "V"], [OUTPUT])], MODEL,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", N_OUT])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def config_text(max_batch_size: int = MAX_BATCH_SIZE, max_queue_size: int = MAX_QUEUE_SIZE,
                max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> str:
    """config.pbtxt: one CPU instance, dynamic batching, a bounded queue (0: unbounded)."""
    policy = f" default_queue_policy {{ max_queue_size: {max_queue_size} }}" if max_queue_size else ""
    return f"""name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "{INPUT}", data_type: TYPE_FP32, dims: [ {N_IN} ] }} ]
output [ {{ name: "{OUTPUT}", data_type: TYPE_FP32, dims: [ {N_OUT} ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us}{policy} }}
"""


def build_repository(root: Path, trips: int = TRIPS, max_batch_size: int = MAX_BATCH_SIZE,
                     max_queue_size: int = MAX_QUEUE_SIZE) -> Path:
    """A model repository holding only the stress model; returns `root`."""
    build_onnx(root / MODEL / "1" / "model.onnx", trips)
    (root / MODEL / "config.pbtxt").write_text(config_text(max_batch_size, max_queue_size))
    return root


def inputs(count: int, seed: int) -> np.ndarray:
    """`count` distinct rows [count, N_IN] in [0, 1): request i of a phase sends row i."""
    return np.random.default_rng(seed).random((count, N_IN), dtype=np.float32)


def reference(x: np.ndarray, seed: int = SEED) -> np.ndarray:
    """The model's OUTPUT0 for rows x [n, N_IN], computed in numpy (see the module's docstring), [n, N_OUT]."""
    u, v = weights(seed)
    out = np.empty((len(x), N_OUT), np.float32)
    for start in range(0, len(x), REFERENCE_CHUNK_ROWS):
        drive = x[start:start + REFERENCE_CHUNK_ROWS].astype(np.float32) @ u
        h = drive
        for _ in range(REFERENCE_MAX_TRIPS):
            after = np.tanh(0.5 * h + drive)
            moved = float(np.max(np.abs(after - h))) if after.size else 0.0
            h = after
            if moved <= REFERENCE_TOLERANCE:
                break
        out[start:start + REFERENCE_CHUNK_ROWS] = (h.astype(np.float64) @ v.astype(np.float64)).astype(np.float32)
    return out


def matches(got: np.ndarray, want: np.ndarray) -> bool:
    """Whether a served answer equals the reference's, to float32 rounding."""
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=ANSWER_RTOL, atol=ANSWER_ATOL))


def saturating_clients(max_batch_size: int = MAX_BATCH_SIZE, max_queue_size: int = MAX_QUEUE_SIZE) -> int:
    """Closed-loop clients that keep the instance busy with none refused: a batch running and the next one
    queued. A queue shorter than a batch makes batches of its length (cost is per row, so capacity is the
    same); more clients would only spin on RESOURCE_EXHAUSTED. An unbounded queue: two full batches."""
    batch = min(max_batch_size, max_queue_size) if max_queue_size else max_batch_size
    return batch + (max_queue_size or max_batch_size)
