"""infergate's .proto files stay wire-compatible with tritonclient's, and the stubs stay fresh."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor, descriptor_pb2

from infergate.proto import generate
from infergate.proto import grpc_service_pb2 as ours_service
from infergate.proto import model_config_pb2 as ours_config


def _shape(file: descriptor.FileDescriptor) -> dict[str, object]:
    """Everything that matters on the wire: message, field number, type, label; enums; RPCs."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    shape: dict[str, object] = {}

    def message(m: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{m.name}"
        shape[name] = sorted((f.number, f.name, f.type, f.label, f.type_name, f.oneof_index
                              if f.HasField("oneof_index") else -1) for f in m.field)
        for nested in m.nested_type:
            message(nested, name)
        for enum in m.enum_type:
            shape[f"{name}.{enum.name}"] = sorted((v.number, v.name) for v in enum.value)

    for m in proto.message_type:
        message(m, proto.package)
    for enum in proto.enum_type:
        shape[f"{proto.package}.{enum.name}"] = sorted((v.number, v.name) for v in enum.value)
    for service in proto.service:
        shape[service.name] = sorted((m.name, m.input_type, m.output_type, m.client_streaming,
                                      m.server_streaming) for m in service.method)
    return shape


def test_wire_compatible_with_tritonclient() -> None:
    from tritonclient.grpc import model_config_pb2 as theirs_config
    from tritonclient.grpc import service_pb2 as theirs_service

    assert _shape(ours_service.DESCRIPTOR) == _shape(theirs_service.DESCRIPTOR)
    assert _shape(ours_config.DESCRIPTOR) == _shape(theirs_config.DESCRIPTOR)


def test_round_trip_through_tritonclient_messages() -> None:
    from tritonclient.grpc import service_pb2 as theirs

    request = theirs.ModelInferRequest(model_name="m", id="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 3]).parameters["p"].int64_param = 5
    request.raw_input_contents.append(b"\1\2")
    decoded = ours_service.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.inputs[0].parameters["p"].int64_param == 5
    assert theirs.ModelInferRequest.FromString(decoded.SerializeToString()) == request


def test_committed_stubs_are_fresh() -> None:
    pytest.importorskip("grpc_tools")
    assert generate.main(["--check"]) == 0, "run: python -m infergate.proto.generate"


def test_stubs_live_in_a_private_pool() -> None:
    from google.protobuf import descriptor_pool

    assert ours_service.DESCRIPTOR.pool is not descriptor_pool.Default()
