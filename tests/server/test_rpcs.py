"""End to end: every metadata, health and repository RPC through the stock tritonclient."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import has_torch


def test_server_live_ready_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "infergate"
    assert {"model_repository", "statistics", "model_configuration"} <= set(metadata.extensions)


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("classifier")
    assert client.is_model_ready("add_sub", "1") and client.is_model_ready("add_sub", "2")
    assert not client.is_model_ready("add_sub", "3")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("broken_config")


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("classifier")
    assert metadata.name == "classifier" and metadata.platform == "onnxruntime_onnx"
    assert list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT0", "FP32", [-1, 16])]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("PROBS", [-1, 4]), ("LOGITS", [-1, 4])]
    # add_sub's config names no tensors: they are completed from the ONNX file.
    add_sub = client.get_model_metadata("add_sub")
    assert list(add_sub.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in add_sub.inputs] == [
        ("INPUT0", "INT32", [-1, 4]), ("INPUT1", "INT32", [-1, 4])]
    nobatch = client.get_model_metadata("add_sub_nobatch")
    assert [list(t.shape) for t in nobatch.inputs] == [[4], [4]]


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("classifier").config
    assert config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [i.name for i in config.input] == ["INPUT0"]
    completed = client.get_model_config("add_sub").config
    assert completed.platform == "onnxruntime_onnx"
    assert [o.name for o in completed.output] == ["OUTPUT0", "OUTPUT1"]


def test_model_metadata_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == "model 'no_such_model' is not in the model repository"


def test_repository_index_reports_failures(client: grpcclient.InferenceServerClient) -> None:
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("classifier", "1")].state == "READY"
    assert index[("add_sub", "2")].state == "READY"
    broken = index[("broken_config", "")]
    assert broken.state == "UNAVAILABLE"
    assert "config.pbtxt: not a valid ModelConfig in protobuf text format" in broken.reason
    missing = index[("missing_file", "")]
    assert missing.state == "UNAVAILABLE"
    assert missing.reason.startswith("model 'missing_file' version 1: model file ")
    assert missing.reason.endswith("missing_file/1/model.onnx not found")
    ready_only = client.get_model_repository_index()
    assert ready_only.models


def test_unavailable_model_says_why(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("missing_file")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "model 'missing_file' is not ready: model 'missing_file' version 1: model file" in info.value.message()


def test_model_control_needs_explicit_mode(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.load_model("classifier")
    assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert info.value.message() == ("explicit model load is not allowed: start the server with "
                                    "--model-control-mode explicit")


def test_unsupported_rpc_is_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert info.value.message() == "TraceSetting is not supported by infergate"


def test_cuda_shared_memory_is_refused_clearly_without_a_gpu(client: grpcclient.InferenceServerClient) -> None:
    # tritonclient's own calls, as tritonclient.utils.cuda_shared_memory users make them (no GPU on this machine).
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("frames", raw_handle=b"\x00" * 64, device_id=0, byte_size=1 << 20)
    assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert info.value.message() == (
        "CUDA shared memory region 'frames' (device_id 0, byte_size 1048576) cannot be registered: this server sees "
        "no CUDA device (no GPU, or CUDA_VISIBLE_DEVICES hides it); system shared memory (SystemSharedMemoryRegister, "
        "tritonclient.utils.shared_memory) works here and on every node")
    with pytest.raises(InferenceServerException) as info:
        client.get_cuda_shared_memory_status("frames")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert info.value.message() == ("CUDA shared memory region 'frames' is not registered (this server registers "
                                    "none: it sees no CUDA device)")
    client.unregister_cuda_shared_memory("frames")  # like an unknown system region: not an error
    client.unregister_cuda_shared_memory()


def test_health_checking_and_reflection(url: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        services = {s.name for r in reflect.ServerReflectionInfo(iter([request]))
                    for s in r.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection"} <= services
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest")
        found = [r for r in reflect.ServerReflectionInfo(iter([request]))]
        assert found[0].file_descriptor_response.file_descriptor_proto


def test_reflection_v1(url: str) -> None:
    """grpc.reflection.v1, which current grpcurl, grpc_cli and Postman ask for first: v1alpha's bytes."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    def ask(channel: grpc.Channel, **request: str) -> list[reflection_pb2.ServerReflectionResponse]:
        call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        return list(call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10))

    def files(response: reflection_pb2.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        protos = [descriptor_pb2.FileDescriptorProto.FromString(b)
                  for b in response.file_descriptor_response.file_descriptor_proto]
        return {proto.name: proto for proto in protos}

    with grpc.insecure_channel(url) as channel:
        (listed,) = ask(channel, list_services="")
        assert {s.name for s in listed.list_services_response.service} == {
            "inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection"}
        (found,) = ask(channel, file_containing_symbol="inference.GRPCInferenceService")
        assert not found.HasField("error_response")
        services = {f"{proto.package}.{s.name}" for proto in files(found).values() for s in proto.service}
        assert "inference.GRPCInferenceService" in services
        # A client that describes the reflection service itself gets v1's own file, under v1's package.
        (own,) = ask(channel, file_containing_symbol="grpc.reflection.v1.ServerReflection")
        v1 = files(own)["grpc/reflection/v1/reflection.proto"]
        assert v1.package == "grpc.reflection.v1"
        assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
        (missing,) = ask(channel, file_containing_symbol="no.such.Symbol")
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.skipif(not has_torch(), reason="the torch extra is not installed")
def test_torch_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("torch_linear")
    assert metadata.platform == "pytorch_libtorch"
    assert [t.name for t in metadata.outputs] == ["OUTPUT__0", "OUTPUT__1"]


def test_statistics_of_unknown_and_unavailable_models(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("no_such_model")
    assert (info.value.status(), info.value.message()) == (
        "StatusCode.NOT_FOUND", "model 'no_such_model' is not in the model repository")
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("broken_config")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert info.value.message().startswith("model 'broken_config' is not ready: ")
