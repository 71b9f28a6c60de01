"""What a load test sends: the model's inputs from ModelMetadata, request bytes built once, response checks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from infergate.bench.loadgen.errors import BenchError
from infergate.models.datatypes import BYTES_LENGTH, CONTENTS_FIELDS, NUMPY_DTYPES, encode_bytes
from infergate.proto import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
INFER_METHOD = SERVICE + "ModelInfer"
CONNECT_TIMEOUT_S = 5.0  # how long to wait for the target to accept a connection
RPC_TIMEOUT_S = 10.0  # metadata and reference requests
FLOAT_RTOL = 1e-3  # batched and unbatched float results may differ in the last bits
FLOAT_ATOL = 1e-5


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as ModelMetadata gives it: -1 for a variable dimension


@dataclass(frozen=True)
class ModelInfo:
    """A model as the target describes it."""

    name: str
    version: str  # "" for the server's default
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int | None  # from ModelConfig; None when the target lacks that RPC (then: leading -1 batches)
    server: str  # "name version" from ServerMetadata


def grpc_target(target: str) -> str:
    """The address grpc dials: HOST:PORT or unix:PATH, checked for form."""
    if target.startswith("unix:"):
        if len(target) <= len("unix:"):
            raise BenchError(f"--target {target!r}: expected unix:PATH")
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"--target {target!r}: expected HOST:PORT or unix:PATH")
    return target


def _call(channel: grpc.Channel, method: str, request: object, response_type: Any, timeout_s: float) -> object:
    stub = channel.unary_unary(SERVICE + method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)
    return stub(request, timeout=timeout_s)


def fetch_model(target: str, model: str, version: str = "") -> ModelInfo:
    """ModelMetadata (and ModelConfig where the target has it); clear errors for an unreachable target or model."""
    with grpc.insecure_channel(grpc_target(target)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise BenchError(f"cannot reach {target}: no gRPC server answered within {CONNECT_TIMEOUT_S:g} s") from None
        try:
            server = _call(channel, "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse,
                           RPC_TIMEOUT_S)
            meta = _call(channel, "ModelMetadata", pb.ModelMetadataRequest(name=model, version=version),
                         pb.ModelMetadataResponse, RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise BenchError(f"{target}: model {model!r}: {exc.code().name}: {exc.details()}") from None
        assert isinstance(server, pb.ServerMetadataResponse) and isinstance(meta, pb.ModelMetadataResponse)
        max_batch_size: int | None = None
        try:
            config = _call(channel, "ModelConfig", pb.ModelConfigRequest(name=model, version=version),
                           pb.ModelConfigResponse, RPC_TIMEOUT_S)
            assert isinstance(config, pb.ModelConfigResponse)
            max_batch_size = config.config.max_batch_size
        except grpc.RpcError:
            logger.debug("%s has no ModelConfig for %s: a leading -1 dimension is taken as the batch", target, model)
    tensors = [tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in group)
               for group in (meta.inputs, meta.outputs)]
    for tensor in tensors[0]:
        if tensor.datatype not in NUMPY_DTYPES:
            raise BenchError(f"model {model!r} input {tensor.name!r} has datatype {tensor.datatype}, which the "
                             f"harness cannot generate (expected one of {sorted(NUMPY_DTYPES)})")
    return ModelInfo(meta.name, version, meta.platform, tensors[0], tensors[1], max_batch_size,
                     f"{server.name} {server.version}".strip())


def parse_shape_overrides(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """--shape NAME:D1,D2 (as perf_analyzer: without the batch dimension of a batching model)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 0:
            raise BenchError(f"--shape {item!r}: expected NAME:D1,D2,... with non-negative dimensions")
        shapes[name] = shape
    return shapes


def resolve_shapes(info: ModelInfo, batch_size: int,
                   overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Each input's request shape; fails naming the input when a variable dimension has no --shape."""
    if unknown := sorted(set(overrides) - {t.name for t in info.inputs}):
        raise BenchError(f"--shape names {unknown}, not inputs of model {info.name!r} "
                         f"(its inputs: {[t.name for t in info.inputs]})")
    batching = (info.max_batch_size or 0) > 0 if info.max_batch_size is not None else None
    if batching and batch_size > (info.max_batch_size or 0):
        raise BenchError(f"--batch-size {batch_size} is above max_batch_size {info.max_batch_size} of model "
                         f"{info.name!r}")
    shapes = {}
    for tensor in info.inputs:
        dims = list(tensor.shape)
        has_batch = batching if batching is not None else bool(dims) and dims[0] == -1
        lead, rest = ([batch_size], dims[1:]) if has_batch else ([], dims)
        if tensor.name in overrides:
            rest = list(overrides[tensor.name])
        if -1 in rest or any(d < -1 for d in rest):
            raise BenchError(f"cannot infer the shape of input {tensor.name!r} of model {info.name!r}: ModelMetadata "
                             f"gives {list(tensor.shape)}; pass --shape {tensor.name}:DIMS (without the batch "
                             "dimension)")
        if not has_batch and batch_size != 1:
            raise BenchError(f"--batch-size {batch_size}: model {info.name!r} does not batch (input {tensor.name!r} "
                             f"has shape {list(tensor.shape)})")
        shapes[tensor.name] = tuple(lead + rest)
    return shapes


def random_inputs(info: ModelInfo, shapes: dict[str, tuple[int, ...]], count: int,
                  seed: int) -> list[dict[str, np.ndarray]]:
    """`count` distinct requests of seeded random data: floats in [0, 1), small integers, short byte strings."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        arrays: dict[str, np.ndarray] = {}
        for tensor in info.inputs:
            shape, dtype = shapes[tensor.name], NUMPY_DTYPES[tensor.datatype]
            if tensor.datatype == "BYTES":
                flat = [rng.bytes(int(rng.integers(1, 16))) for _ in range(int(np.prod(shape)))]
                arrays[tensor.name] = np.array(flat, dtype=object).reshape(shape)
            elif tensor.datatype == "BOOL":
                arrays[tensor.name] = rng.integers(0, 2, shape).astype(np.bool_)
            elif dtype.kind in "iu":
                arrays[tensor.name] = rng.integers(0, 100, shape).astype(dtype)
            else:
                arrays[tensor.name] = rng.random(shape).astype(dtype)
        requests.append(arrays)
    return requests


def load_data(path: Path, info: ModelInfo, shapes: dict[str, tuple[int, ...]]
              ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]] | None]:
    """Requests (and expected outputs, when recorded) from an .npz: key NAME holds input NAME of every request
    stacked on a new first axis; key `expected:NAME` the same for output NAME. `--record` writes this format."""
    try:
        data = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as exc:
        raise BenchError(f"--data {path}: not a readable .npz file ({exc})") from None
    with data:
        missing = [t.name for t in info.inputs if t.name not in data.files]
        if missing:
            raise BenchError(f"--data {path} lacks input(s) {missing} of model {info.name!r} (it has {data.files})")
        arrays = {name: data[name] for name in data.files}
    count = len(arrays[info.inputs[0].name])
    for tensor in info.inputs:
        got = arrays[tensor.name]
        if len(got) != count or tuple(got.shape[1:]) != shapes[tensor.name]:
            raise BenchError(f"--data {path}: input {tensor.name!r} has shape {list(got.shape)}, expected "
                             f"[{count}, {', '.join(map(str, shapes[tensor.name]))}] (requests x request shape)")
    inputs = [{t.name: arrays[t.name][i].astype(NUMPY_DTYPES[t.datatype]) for t in info.inputs} for i in range(count)]
    outputs = [k.partition(":")[2] for k in arrays if k.startswith("expected:")]
    expected = [{name: arrays[f"expected:{name}"][i] for name in outputs} for i in range(count)] if outputs else None
    return inputs, expected


def save_recording(path: Path, inputs: Sequence[dict[str, np.ndarray]],
                   outputs: Sequence[dict[str, np.ndarray]]) -> None:
    """The requests and their reference outputs, in the format --data reads."""
    arrays = {name: np.stack([r[name] for r in inputs]) for name in inputs[0]}
    arrays.update({f"expected:{name}": np.stack([o[name] for o in outputs]) for name in outputs[0]})
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    return encode_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes()


def encode_request(info: ModelInfo, inputs: dict[str, np.ndarray]) -> bytes:
    """A serialised ModelInferRequest with raw_input_contents, asking for every output."""
    request = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
    for tensor in info.inputs:
        array = inputs[tensor.name]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(array.shape))
        request.raw_input_contents.append(_raw_bytes(array, tensor.datatype))
    for output in info.outputs:
        request.outputs.add(name=output.name)
    return request.SerializeToString()


def _decode_bytes(data: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(data):
        (length,) = BYTES_LENGTH.unpack_from(data, offset)
        items.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


def decode_response(data: bytes) -> dict[str, np.ndarray]:
    """Every output of a serialised ModelInferResponse, from raw_output_contents or typed contents."""
    response = pb.ModelInferResponse.FromString(data)
    outputs = {}
    for i, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if i < len(response.raw_output_contents):
            raw = response.raw_output_contents[i]
            if tensor.datatype == "BYTES":
                array = np.array(_decode_bytes(raw), dtype=object)
            else:
                array = np.frombuffer(raw, dtype=NUMPY_DTYPES.get(tensor.datatype, np.uint8))
        else:
            values = list(getattr(tensor.contents, CONTENTS_FIELDS.get(tensor.datatype, "bytes_contents")))
            array = np.array(values, dtype=NUMPY_DTYPES.get(tensor.datatype, object))
        outputs[tensor.name] = array.reshape(shape)
    return outputs


def mismatch(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str | None:
    """None when every expected output is there and equal (floats within tolerance); else what differs."""
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            return f"output {name!r} missing from the response"
        if got.shape != want.shape:
            return f"output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
        if want.dtype.kind == "f":
            if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=FLOAT_RTOL, atol=FLOAT_ATOL):
                worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                return f"output {name!r} differs from the expected values by up to {worst:.3g}"
        elif not np.array_equal(got, want):
            return f"output {name!r} differs from the expected values"
    return None


def reference_outputs(target: str, requests: Sequence[bytes]) -> list[dict[str, np.ndarray]]:
    """Each request sent once, alone, before the load: its answer is what the loaded server must give."""
    outputs = []
    with grpc.insecure_channel(grpc_target(target)) as channel:
        call = channel.unary_unary(INFER_METHOD)
        for request in requests:
            try:
                outputs.append(decode_response(call(request, timeout=RPC_TIMEOUT_S)))
            except grpc.RpcError as exc:
                raise BenchError(f"{target}: the first, unloaded request failed: {exc.code().name}: "
                                 f"{exc.details()}") from None
    return outputs
