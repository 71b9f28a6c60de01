"""Decoding is bounded: every declared shape is checked against the limits and its payload before
anything is allocated, BYTES length prefixes are checked element by element, and malformed
protobuf bodies are refused, all with INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a size limit)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

from infergate.kernels import bytes_tensor
from infergate.kernels.bytes_tensor import BytesTensorError, split_bytes_elements, split_bytes_objects_reference
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.errors import InferError, Status, TooLarge
from infergate.proto import grpc_service_pb2 as pb
from infergate.proto import model_config_pb2 as mc
from infergate.server import codec
from infergate.server.codec import MAX_ELEMENTS, MAX_RANK, ModelIO, decode_request

from harness import ServerProcess, start_server

ALLOCATION_CEILING_BYTES = 1 << 20  # what decoding a rejected request may allocate at its peak
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
NOT_PROTOBUF = "the ModelInfer request is not a valid protobuf message: Error parsing message with type " \
               "'inference.ModelInferRequest'"

# Two models with free dims, so only the server's own limits stand between a shape and an allocation.
DYN_FP32 = ModelSpec("dyn_fp32", "onnxruntime_onnx", 0, [TensorSpec("X", "FP32", (-1, -1))],
                     [TensorSpec("Y", "FP32", (-1, -1))], mc.ModelConfig())
DYN_BYTES = ModelSpec("dyn_bytes", "onnxruntime_onnx", 0, [TensorSpec("S", "BYTES", (-1,))],
                      [TensorSpec("T", "BYTES", (-1,))], mc.ModelConfig())
# A batching model with a typed input, for the contents paths.
INT8_ROWS = ModelSpec("int8_rows", "onnxruntime_onnx", 4, [TensorSpec("I", "INT8", (3,)),
                                                           TensorSpec("B", "BYTES", (1,), optional=True)],
                      [TensorSpec("O", "INT8", (3,)), TensorSpec("P", "INT8", (3,))], mc.ModelConfig())


def _request(model: str, name: str, datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def _decode_error(spec: ModelSpec, request: pb.ModelInferRequest) -> InferError:
    with pytest.raises(InferError) as info:
        decode_request(request, ModelIO.of(spec))
    return info.value


def _peak_bytes(call: Callable[[], object]) -> int:
    """The peak of what call allocates through Python's allocators (NumPy's included)."""
    tracemalloc.start()
    try:
        call()
    except InferError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _bytes_payload(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


# -- shapes against limits and payload (no server) ---------------------------------------


def test_huge_shape_with_tiny_payload_is_refused_without_allocating() -> None:
    request = _request("dyn_fp32", "X", "FP32", [2**31, 2**31], bytes(8))
    error = _decode_error(DYN_FP32, request)
    assert (error.status, error.message) == (
        Status.INVALID_ARGUMENT, f"input 'X' shape [2147483648, 2147483648] has {2**62} elements, above the limit "
        f"of {MAX_ELEMENTS} per tensor")
    assert _peak_bytes(lambda: decode_request(request, ModelIO.of(DYN_FP32))) < ALLOCATION_CEILING_BYTES
    request = _request("dyn_fp32", "X", "FP32", [2**16, 2**15], bytes(8))  # within the limits, not the payload
    error = _decode_error(DYN_FP32, request)
    assert error.message == (f"input 'X' raw_input_contents has 8 bytes, expected {2**31 * 4} for shape "
                             "[65536, 32768] and datatype FP32")
    assert _peak_bytes(lambda: decode_request(request, ModelIO.of(DYN_FP32))) < ALLOCATION_CEILING_BYTES


def test_huge_bytes_shape_with_tiny_payload_is_refused_without_allocating() -> None:
    request = _request("dyn_bytes", "S", "BYTES", [10**9], _bytes_payload(b"hi"))
    error = _decode_error(DYN_BYTES, request)
    assert (error.status, error.message) == (
        Status.INVALID_ARGUMENT, "input 'S' raw_input_contents has 6 bytes, too few for the 1000000000 elements of "
        "shape [1000000000]: each BYTES element needs at least its 4-byte length prefix")
    assert _peak_bytes(lambda: decode_request(request, ModelIO.of(DYN_BYTES))) < ALLOCATION_CEILING_BYTES


def test_rank_negative_and_absurd_dims() -> None:
    for shape, message in (
        ([1] * 100, f"input 'X' shape has 100 dimensions, above the limit of {MAX_RANK}"),
        ([1] * (MAX_RANK + 1), f"input 'X' shape has {MAX_RANK + 1} dimensions, above the limit of {MAX_RANK}"),
        ([2, -3], f"input 'X' shape[1] is -3, expected a dimension in 0..{MAX_ELEMENTS}"),
        ([-2**63, 1], f"input 'X' shape[0] is {-2**63}, expected a dimension in 0..{MAX_ELEMENTS}"),
        ([2**62, 0], f"input 'X' shape[0] is {2**62}, expected a dimension in 0..{MAX_ELEMENTS}"),  # 0 elements
        ([2**63 - 1, 1], f"input 'X' shape[0] is {2**63 - 1}, expected a dimension in 0..{MAX_ELEMENTS}"),
        ([2, 3, 4], "input 'X' has shape [2, 3, 4], expected [-1, -1]"),
    ):
        error = _decode_error(DYN_FP32, _request("dyn_fp32", "X", "FP32", shape, b""))
        assert (error.status, error.message) == (Status.INVALID_ARGUMENT, message)
    decoded = decode_request(_request("dyn_fp32", "X", "FP32", [MAX_ELEMENTS, 0], b""), ModelIO.of(DYN_FP32))
    assert decoded.inputs["X"].shape == (MAX_ELEMENTS, 0)


def test_request_bytes_limit_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_REQUEST_BYTES", 64)
    error = _decode_error(DYN_FP32, _request("dyn_fp32", "X", "FP32", [4, 5], bytes(80)))
    assert isinstance(error, TooLarge)
    assert (error.status, error.message) == (
        Status.RESOURCE_EXHAUSTED, "the request's input data, up to and including input 'X', is 80 bytes, above "
        "the server's limit of 64 bytes")
    assert decode_request(_request("dyn_fp32", "X", "FP32", [4, 4], bytes(64)), ModelIO.of(DYN_FP32))


# -- BYTES length prefixes ----------------------------------------------------------------


@pytest.mark.parametrize(("payload", "count", "message"), [
    (_bytes_payload(b"abcde", b"") + b"\x09\0\0\0abc", 3, "BYTES element 2 declares 9 bytes, but only 3 remain"),
    (b"\xff\xff\xff\xff" + bytes(8), 3, "BYTES element 0 declares 4294967295 bytes, but only 8 remain"),
    (b"\x08\0\0\0" + bytes(8), 3, "BYTES data ends after 1 of 3 elements"),
    (_bytes_payload(b"ab") + b"\0\0", 2, "BYTES element 1 has only 2 of the 4 bytes of its length prefix (at byte 6)"),
    (_bytes_payload(b"a") + b"zz", 1, "BYTES data has 2 bytes left over after its 1 elements"),
    (b"\0\0\0\0", 0, "BYTES data has 4 bytes left over after its 0 elements"),
])
def test_bad_length_prefix(payload: bytes, count: int, message: str) -> None:
    error = _decode_error(DYN_BYTES, _request("dyn_bytes", "S", "BYTES", [count], payload))
    assert (error.status, error.message) == (Status.INVALID_ARGUMENT, f"input 'S' {message}")
    with pytest.raises(BytesTensorError) as info:
        split_bytes_elements(payload, count, split_bytes_objects_reference)
    assert info.value.message == message


@pytest.mark.skipif(bytes_tensor.SPLIT is split_bytes_objects_reference, reason="compiled kernels not built")
def test_compiled_split_matches_reference() -> None:
    rng = np.random.default_rng(3)
    for count in (0, 1, 7, 1000, 100_000):
        elements = [rng.bytes(int(n)) for n in rng.integers(0, 9, count)]
        payload = _bytes_payload(*elements)
        compiled = split_bytes_elements(payload, count)
        assert compiled.tolist() == split_bytes_elements(payload, count, split_bytes_objects_reference).tolist()
        assert compiled.tolist() == elements
        for cut in {len(payload) - 1, len(payload) // 2} if payload else set():
            with pytest.raises(BytesTensorError) as compiled_error:
                split_bytes_elements(payload[:cut], count)
            with pytest.raises(BytesTensorError) as reference_error:
                split_bytes_elements(payload[:cut], count, split_bytes_objects_reference)
            assert compiled_error.value.message == reference_error.value.message


def test_bytes_tensor_decodes() -> None:
    decoded = decode_request(_request("dyn_bytes", "S", "BYTES", [3], _bytes_payload(b"a", b"", b"\0xyz")),
                             ModelIO.of(DYN_BYTES))
    assert decoded.inputs["S"].tolist() == [b"a", b"", b"\0xyz"]


# -- contents, requested outputs, parameters ----------------------------------------------


def _contents_request(values: list[int], field: str = "int_contents") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="int8_rows")
    getattr(request.inputs.add(name="I", datatype="INT8", shape=[1, 3]).contents, field).extend(values)
    return request


def test_contents_paths() -> None:
    decoded = decode_request(_contents_request([1, -128, 127]), ModelIO.of(INT8_ROWS))
    assert decoded.inputs["I"].dtype == np.int8 and decoded.inputs["I"].tolist() == [[1, -128, 127]]
    for request, message in (
        (_contents_request([1, 300, 3]), "input 'I' contents.int_contents[1] is 300, outside the range of INT8 "
                                         "(-128..127)"),
        (_contents_request([1, 2]), "input 'I' contents.int_contents has 2 elements, expected 3 for shape [1, 3]"),
        (_contents_request([1, 2, 3], "int64_contents"), "input 'I' has datatype INT8, whose contents go in "
                                                         "contents.int_contents, but the request fills "
                                                         "contents.int64_contents"),
    ):
        error = _decode_error(INT8_ROWS, request)
        assert (error.status, error.message) == (Status.INVALID_ARGUMENT, message)
    request = _contents_request([1, 2, 3])
    request.inputs.add(name="B", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.extend([bytes(3), _bytes_payload(b"x")])
    assert _decode_error(INT8_ROWS, request).message == (
        "input 'I' has contents, but the request sends it in raw_input_contents; expected one or the other")
    huge = _contents_request([])
    huge.inputs[0].shape[:] = [2**31, 2**31]
    assert _peak_bytes(lambda: decode_request(huge, ModelIO.of(INT8_ROWS))) < ALLOCATION_CEILING_BYTES


def test_requested_outputs_and_parameters() -> None:
    request = _contents_request([1, 2, 3])
    request.outputs.add(name="O")
    request.outputs.add(name="O")
    assert _decode_error(INT8_ROWS, request).message == "requested output 'O' appears more than once in the request"
    request = _contents_request([1, 2, 3])
    request.outputs.add(name="P").parameters["shared_memory_region"].string_param = "r"
    request.outputs[0].parameters["shared_memory_byte_size"].int64_param = 3
    assert _decode_error(INT8_ROWS, request).message == (
        "requested output 'P' is in shared memory, which this endpoint does not support")
    request = _contents_request([1, 2, 3])
    request.parameters["timeout"].uint64_param = 2**64 - 1
    assert _decode_error(INT8_ROWS, request).message == (
        f"parameter 'timeout' is {2**64 - 1}, expected an integer in 0..{2**63 - 1}")
    request.parameters["timeout"].string_param = "soon"
    assert _decode_error(INT8_ROWS, request).message == (
        "parameter 'timeout' is a string_param, expected an int64 or uint64 parameter")


# -- end to end, against a real server ----------------------------------------------------


def _identity(path: Path, name: str, onnx_type: int, dims: list[str]) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["IN"], ["OUT"])], name,
                              [helper.make_tensor_value_info("IN", onnx_type, dims)],
                              [helper.make_tensor_value_info("OUT", onnx_type, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True)
    onnx.save(model, path / "model.onnx")


@pytest.fixture(scope="module")
def dyn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("dyn_repo")
    for name, onnx_type, config_type, dims in (("dyn_fp32", TensorProto.FLOAT, "TYPE_FP32", ["a", "b"]),
                                                ("dyn_bytes", TensorProto.STRING, "TYPE_STRING", ["n"])):
        _identity(root / name / "1", name, onnx_type, dims)
        shape = ", ".join("-1" for _ in dims)
        (root / name / "config.pbtxt").write_text(
            f'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            f'input [ {{ name: "IN", data_type: {config_type}, dims: [ {shape} ] }} ]\n'
            f'output [ {{ name: "OUT", data_type: {config_type}, dims: [ {shape} ] }} ]\n')
    server = start_server("--model-repository", str(root))
    yield server
    server.stop()


def _raw_call(address: str, body: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(MODEL_INFER)  # no serializers: the body goes out exactly as built
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=30)
    return info.value


def _still_serves(address: str) -> None:
    with grpcclient.InferenceServerClient(address) as client:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        tensor = grpcclient.InferInput("IN", [2, 3], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("dyn_fp32", [tensor]).as_numpy("OUT"), x)
        words = np.array([b"ok", b""], dtype=object)
        tensor = grpcclient.InferInput("IN", [2], "BYTES")
        tensor.set_data_from_numpy(words)
        assert client.infer("dyn_bytes", [tensor]).as_numpy("OUT").tolist() == [b"ok", b""]


@pytest.mark.parametrize(("request_", "message"), [
    (_request("dyn_fp32", "IN", "FP32", [2**31, 2**31], bytes(8)),
     f"input 'IN' shape [2147483648, 2147483648] has {2**62} elements, above the limit of {MAX_ELEMENTS} per tensor"),
    (_request("dyn_fp32", "IN", "FP32", [1, 2**31], bytes(8)),
     f"input 'IN' raw_input_contents has 8 bytes, expected {2**33} for shape [1, 2147483648] and datatype FP32"),
    (_request("dyn_bytes", "IN", "BYTES", [10**9], _bytes_payload(b"hi")),
     "input 'IN' raw_input_contents has 6 bytes, too few for the 1000000000 elements of shape [1000000000]: each "
     "BYTES element needs at least its 4-byte length prefix"),
    (_request("dyn_bytes", "IN", "BYTES", [3], _bytes_payload(b"abc") + b"\x10\0\0\0" + bytes(4)),
     "input 'IN' BYTES element 1 declares 16 bytes, but only 4 remain"),
    (_request("dyn_fp32", "IN", "FP32", [1] * 100, bytes(4)),
     f"input 'IN' shape has 100 dimensions, above the limit of {MAX_RANK}"),
    (_request("dyn_fp32", "IN", "FP32", [-1, 2], bytes(8)),
     f"input 'IN' shape[0] is -1, expected a dimension in 0..{MAX_ELEMENTS}"),
], ids=["2^31x2^31", "1x2^31", "bytes-1e9", "bad-prefix", "rank-100", "negative-dim"])
def test_absurd_requests_end_to_end(dyn_server: ServerProcess, request_: pb.ModelInferRequest, message: str) -> None:
    error = _raw_call(dyn_server.address, request_.SerializeToString())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    _still_serves(dyn_server.address)


def _tag(field_number: int, wire_type: int) -> bytes:
    value, out = (field_number << 3) | wire_type, b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


@pytest.mark.parametrize("depth", [101, 10_000, 1_000_000])
def test_deeply_nested_unknown_groups_are_refused(dyn_server: ServerProcess, depth: int) -> None:
    """upb parses up to 100 nested groups; deeper is a DecodeError, so the body never recurses further."""
    body = _request("dyn_fp32", "IN", "FP32", [1, 1], bytes(4)).SerializeToString()
    body += _tag(99, 3) * depth + _tag(99, 4) * depth  # field 99 is unknown to ModelInferRequest
    error = _raw_call(dyn_server.address, body)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_PROTOBUF)
    _still_serves(dyn_server.address)


def test_truncated_body_is_refused(dyn_server: ServerProcess) -> None:
    body = _request("dyn_fp32", "IN", "FP32", [1, 4], bytes(16)).SerializeToString()
    for cut in (len(body) - 1, len(body) // 2, 3):
        error = _raw_call(dyn_server.address, body[:cut])
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, NOT_PROTOBUF)
    _still_serves(dyn_server.address)


def test_shallow_unknown_groups_are_skipped(dyn_server: ServerProcess) -> None:
    """Nesting protobuf allows (here 50 deep) is ignored like any unknown field."""
    body = _request("dyn_fp32", "IN", "FP32", [1, 1], bytes(4)).SerializeToString()
    with grpc.insecure_channel(dyn_server.address) as channel:
        call = channel.unary_unary(MODEL_INFER, response_deserializer=pb.ModelInferResponse.FromString)
        response = call(body + _tag(99, 3) * 50 + _tag(99, 4) * 50, timeout=30)
    assert list(response.outputs[0].shape) == [1, 1]
