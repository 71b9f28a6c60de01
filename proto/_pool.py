"""infergate's private protobuf descriptor pool, shared by its generated stubs."""

from google.protobuf import descriptor_pool

# Separate from descriptor_pool.Default() so tritonclient's own `inference` stubs can
# be imported into the same process (tests, the bench client) without symbol clashes.
POOL = descriptor_pool.DescriptorPool()


def add_grpc_service_protos() -> None:
    """Copies grpc's health and reflection protos into POOL so server reflection can list them."""
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    for module in (health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        try:
            POOL.FindFileByName(proto.name)
        except KeyError:
            POOL.Add(proto)
