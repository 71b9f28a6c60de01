"""Server reflection: the one set-up every transport serves, as grpc.reflection.v1alpha and grpc.reflection.v1."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from infergate.proto import _pool
from infergate.server.health import HEALTH_SERVICE
from infergate.server.protocol import SERVICE_NAME

# grpcio-reflection ships only v1alpha; v1 has the same messages and field numbers, so the same
# servicer and message classes answer both (current grpcurl, grpc_cli and Postman ask for v1 first).
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"  # upstream's name, so a client resolving it by name finds it
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"

# What reflection's list_services answers, on every transport.
REFLECTED_SERVICES = (SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME, V1_SERVICE_NAME)


def _add_v1_proto() -> None:
    """Adds grpc.reflection.v1 to POOL once: v1alpha's file under v1's package and file name."""
    try:
        _pool.POOL.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix, new_prefix = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = V1_FILE, V1_PACKAGE

    def renamed(type_name: str) -> str:  # fully-qualified references still name v1alpha's package
        return new_prefix + type_name[len(old_prefix):] if type_name.startswith(old_prefix) else type_name

    for message in proto.message_type:  # the reflection messages have no nested types
        for field in message.field:
            if field.HasField("type_name"):  # only message fields have one; setting "" would break scalars
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    _pool.POOL.Add(proto)


def reflection_servicer() -> reflection.aio.ReflectionServicer:
    """Reflection over infergate's descriptor pool, for grpcio's server and the native routes alike."""
    _pool.add_grpc_service_protos()
    _add_v1_proto()
    return reflection.aio.ReflectionServicer(REFLECTED_SERVICES, pool=_pool.POOL)
