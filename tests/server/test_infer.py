"""End to end: inference through the stock tritonclient (sync, aio, streaming) equals a direct call."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from harness import has_torch
from modelgen import IDENTITY_TYPES


def _input(name: str, value: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def _direct(repo: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(repo / model / "1" / "model.onnx")).run(None, feeds)


def test_classifier_equals_onnxruntime(client: grpcclient.InferenceServerClient, test_repository: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    result = client.infer("classifier", [_input("INPUT0", x)])
    probs, logits = _direct(test_repository, "classifier", {"INPUT0": x})
    np.testing.assert_array_equal(result.as_numpy("PROBS"), probs)
    np.testing.assert_array_equal(result.as_numpy("LOGITS"), logits)
    response = result.get_response()
    assert response.model_name == "classifier" and response.model_version == "1"


def test_requested_outputs_and_request_id(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), np.float32)
    result = client.infer("classifier", [_input("INPUT0", x)],
                          outputs=[grpcclient.InferRequestedOutput("LOGITS")], request_id="req-42")
    assert [o.name for o in result.get_response().outputs] == ["LOGITS"]
    assert result.as_numpy("PROBS") is None
    assert result.get_response().id == "req-42"


def test_version_selection(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.int32).reshape(2, 4)
    b = np.full((2, 4), 3, np.int32)
    inputs = [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")]
    for version in ("", "1", "2"):
        result = client.infer("add_sub", inputs, model_version=version)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        assert result.get_response().model_version == (version or "2")


def test_model_without_batching(client: grpcclient.InferenceServerClient) -> None:
    a = np.array([1, 2, 3, 4], np.int32)
    result = client.infer("add_sub_nobatch", [_input("INPUT0", a, "INT32"), _input("INPUT1", a, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
    assert list(result.get_response().outputs[0].shape) == [4]


def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(3)
    values = {
        "BOOL": rng.random((2, 3)) > 0.5,
        "UINT8": rng.integers(0, 255, (2, 3), dtype=np.uint8),
        "INT8": rng.integers(-128, 127, (2, 3), dtype=np.int8),
        "INT32": rng.integers(-2**31, 2**31 - 1, (2, 3), dtype=np.int32),
        "INT64": rng.integers(-2**63, 2**63 - 1, (2, 3), dtype=np.int64),
        "FP16": rng.standard_normal((2, 3)).astype(np.float16),
        "FP32": rng.standard_normal((2, 3)).astype(np.float32),
        "FP64": rng.standard_normal((2, 3)),
        "BYTES": np.array([[b"a", b"", "\u00e9".encode()], [b"x" * 300, "\u20ac 1".encode(), b"z"]], dtype=object),
    }
    inputs = [_input(f"IN_{name}", values[name], name) for name, _ in IDENTITY_TYPES]
    result = client.infer("identity_all", inputs)
    for name, _ in IDENTITY_TYPES:
        out = result.as_numpy(f"OUT_{name}")
        np.testing.assert_array_equal(out, values[name])
        assert out.dtype == values[name].dtype


def test_non_utf8_bytes_for_onnx_string_is_invalid(client: grpcclient.InferenceServerClient) -> None:
    inputs = [_input(f"IN_{name}", np.zeros((1, 3), dtype=np.float32).astype(
        {"BOOL": bool, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
         "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[name]), name)
        for name, _ in IDENTITY_TYPES if name != "BYTES"]
    inputs.append(_input("IN_BYTES", np.array([[b"ok", b"\xff\xfe", b"x"]], dtype=object), "BYTES"))
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity_all", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == ("input 'IN_BYTES' element 1 is not UTF-8 text (invalid start byte at byte 0); "
                                    "ONNX string tensors hold UTF-8 text")


def test_typed_contents_are_accepted(url: str) -> None:
    """Requests may carry tensors in `contents` (typed fields) instead of raw bytes."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, values in (("INPUT0", [1, 2, 3, 4]), ("INPUT1", [10, 20, 30, 40])):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 4])
        tensor.contents.int_contents.extend(values)
    with grpc.insecure_channel(url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], np.int32)
    np.testing.assert_array_equal(out, [11, 22, 33, 44])


@pytest.mark.skipif(not has_torch(), reason="the torch extra is not installed")
def test_torchscript_equals_torch(client: grpcclient.InferenceServerClient, test_repository: Path) -> None:
    import torch

    x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    result = client.infer("torch_linear", [_input("INPUT__0", x)])
    module = torch.jit.load(str(test_repository / "torch_linear/1/model.pt"))
    with torch.inference_mode():
        probs, logits = module(torch.from_numpy(x))
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), probs.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), logits.numpy(), rtol=1e-6)


def test_concurrent_requests_are_batched_and_answered_each(url: str, test_repository: Path) -> None:
    """220 concurrent requests (some of several rows) each get their own rows back, in fewer executions."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(220)]

    async def run() -> tuple[list[np.ndarray], int, int]:
        async with aioclient.InferenceServerClient(url) as client:
            before = (await client.get_inference_statistics("classifier")).model_stats[0]

            async def one(x: np.ndarray) -> np.ndarray:
                tensor = aioclient.InferInput("INPUT0", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                return (await client.infer("classifier", [tensor])).as_numpy("PROBS")

            results = await asyncio.gather(*(one(x) for x in inputs))
            after = (await client.get_inference_statistics("classifier")).model_stats[0]
            return results, after.inference_count - before.inference_count, \
                after.execution_count - before.execution_count

    results, inferences, executions = asyncio.run(run())
    session = ort.InferenceSession(str(test_repository / "classifier/1/model.onnx"))
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, session.run(["PROBS"], {"INPUT0": x})[0], rtol=1e-5, atol=1e-7)
    assert inferences == sum(len(x) for x in inputs)
    assert executions < len(inputs), f"{executions} executions for {len(inputs)} requests: no batching happened"


def test_streaming_in_order_with_errors_inline(url: str, test_repository: Path) -> None:
    responses: queue.Queue[tuple[object, object]] = queue.Queue()
    rng = np.random.default_rng(6)
    inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(20)]
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for i, x in enumerate(inputs):
            client.async_stream_infer("classifier", [_input("INPUT0", x)], request_id=str(i))
            if i == 10:
                bad = np.ones((1, 15), np.float32)
                client.async_stream_infer("classifier", [_input("INPUT0", bad)], request_id="bad")
        got = [responses.get(timeout=30) for _ in range(len(inputs) + 1)]
        client.stop_stream()
    session = ort.InferenceSession(str(test_repository / "classifier/1/model.onnx"))
    ids = []
    for result, error in got:
        if error is not None:
            ids.append("bad")
            assert "input 'INPUT0' has shape [1, 15], expected [-1, 16]" in str(error)
            continue
        request_id = result.get_response().id
        ids.append(request_id)
        expected = session.run(["PROBS"], {"INPUT0": inputs[int(request_id)]})[0]
        np.testing.assert_allclose(result.as_numpy("PROBS"), expected, rtol=1e-5)
    assert ids == [str(i) for i in range(11)] + ["bad"] + [str(i) for i in range(11, 20)]


def test_statistics_after_inference(client: grpcclient.InferenceServerClient) -> None:
    client.infer("classifier", [_input("INPUT0", np.ones((2, 16), np.float32))])
    stats = client.get_inference_statistics("classifier").model_stats
    assert [(s.name, s.version) for s in stats] == [("classifier", "1")]
    s = stats[0]
    assert s.inference_count >= 2 and s.execution_count >= 1 and s.last_inference > 0
    infer = s.inference_stats
    assert infer.success.count >= 1 and infer.success.ns > 0
    assert infer.queue.count == infer.compute_infer.count >= 1
    assert any(b.batch_size >= 1 and b.compute_infer.count >= 1 for b in s.batch_stats)
    everything = client.get_inference_statistics().model_stats
    assert {"classifier", "add_sub"} <= {m.name for m in everything}
