"""Bad input gets the right gRPC status and a message naming the field, the value and what was expected."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def _input(name: str, value: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def _error(client: grpcclient.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput],
           **kwargs: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, **kwargs)
    return info.value.status(), info.value.message()


def _raw_infer(url: str, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    return info.value


GOOD = np.zeros((1, 16), np.float32)


def test_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "nope", [_input("INPUT0", GOOD)]) == (
        "StatusCode.NOT_FOUND", "model 'nope' is not in the model repository")


def test_unknown_version(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", GOOD)], model_version="7") == (
        "StatusCode.NOT_FOUND", "model 'classifier' version 7 is not in the model repository")


def test_unknown_input_name(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", GOOD), _input("EXTRA", GOOD)]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'EXTRA' is not an input of model 'classifier' (expected one of "
        "['INPUT0'])")


def test_missing_input(client: grpcclient.InferenceServerClient) -> None:
    a = np.zeros((1, 4), np.int32)
    assert _error(client, "add_sub", [_input("INPUT0", a, "INT32")]) == (
        "StatusCode.INVALID_ARGUMENT", "model 'add_sub' expects input 'INPUT1', which the request does not have")


def test_duplicate_input(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", GOOD), _input("INPUT0", GOOD)]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' appears more than once in the request")


def test_wrong_datatype(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", GOOD.astype(np.float64), "FP64")]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' has datatype FP64, expected FP32")


def test_wrong_shape(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", np.zeros((2, 15), np.float32))]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' has shape [2, 15], expected [-1, 16]")
    assert _error(client, "classifier", [_input("INPUT0", np.zeros((16,), np.float32))]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' has shape [16], expected [-1, 16]")


def test_batch_above_max_batch_size(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", np.zeros((9, 16), np.float32))]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT0' has batch size 9, above max_batch_size 8 of model "
        "'classifier'")


def test_inputs_with_different_batch_sizes(client: grpcclient.InferenceServerClient) -> None:
    a, b = np.zeros((2, 4), np.int32), np.zeros((3, 4), np.int32)
    assert _error(client, "add_sub", [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")]) == (
        "StatusCode.INVALID_ARGUMENT", "input 'INPUT1' has batch size 3, but other inputs have 2; all inputs "
        "must have the same batch size")


def test_unknown_requested_output(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "classifier", [_input("INPUT0", GOOD)],
                  outputs=[grpcclient.InferRequestedOutput("SCORES")]) == (
        "StatusCode.INVALID_ARGUMENT", "requested output 'SCORES' is not an output of model 'classifier' "
        "(expected one of ['LOGITS', 'PROBS'])")


def test_byte_length_disagrees_with_shape(url: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(b"\0" * 60)
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input 'INPUT0' raw_input_contents has 60 bytes, expected 64 for shape [1, 16] "
                               "and datatype FP32")


def test_raw_contents_count_disagrees_with_inputs(url: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.extend([b"\0" * 64, b"\0" * 64])
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("request has 2 raw_input_contents for 1 inputs not in shared memory; expected "
                               "one per input")


def test_malformed_bytes_tensor(url: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_all")
    request.inputs.add(name="IN_BYTES", datatype="BYTES", shape=[1, 3])
    request.raw_input_contents.append(b"\x05\0\0\0abcde" + b"\0\0\0\0" + b"\x09\0\0\0abc")
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'IN_BYTES' BYTES element 2 declares 9 bytes, but only 3 remain"
    request.raw_input_contents[0] = b"\x05\0\0\0abc"
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input 'IN_BYTES' raw_input_contents has 7 bytes, too few for the 3 elements of "
                               "shape [1, 3]: each BYTES element needs at least its 4-byte length prefix")


def test_contents_count_disagrees_with_shape(url: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 4]).contents.int_contents.extend([1, 2, 3])
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'INPUT0' contents.int_contents has 3 elements, expected 4 for shape [1, 4]"


def test_bad_priority_parameter(client: grpcclient.InferenceServerClient) -> None:
    assert _error(client, "slow", [_input("INPUT0", np.zeros((1, 256), np.float32))], priority=5) == (
        "StatusCode.INVALID_ARGUMENT", "parameter 'priority' is 5, expected 0 (default) or 1..2")


def test_oversized_message(url: str) -> None:
    """Above --max-message-bytes (64 MiB by default) grpc itself refuses with RESOURCE_EXHAUSTED."""
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(b"\0" * (65 * 1024 * 1024))
    error = _raw_infer(url, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


def test_bad_request_does_not_harm_others(client: grpcclient.InferenceServerClient) -> None:
    """Good requests interleaved with bad ones all succeed (the bad never reach a batch)."""
    import concurrent.futures

    def good(i: int) -> bool:
        x = np.full((1, 16), i, np.float32)
        return client.infer("classifier", [_input("INPUT0", x)]).as_numpy("PROBS").shape == (1, 4)

    def bad(i: int) -> str:
        return _error(client, "classifier", [_input("INPUT0", np.zeros((1, 15), np.float32))])[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, i) for i in range(40)]
        bads = [pool.submit(bad, i) for i in range(40)]
        assert all(f.result() for f in goods)
        assert {f.result() for f in bads} == {"StatusCode.INVALID_ARGUMENT"}
    assert client.is_server_live()
