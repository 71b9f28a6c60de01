"""Server reflection: the one set-up every transport serves (grpc_reflection v1alpha, as grpcurl asks)."""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection

from infergate.proto import _pool
from infergate.server.health import HEALTH_SERVICE
from infergate.server.protocol import SERVICE_NAME

# What reflection's list_services answers, on every transport.
REFLECTED_SERVICES = (SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME)


def reflection_servicer() -> reflection.aio.ReflectionServicer:
    """Reflection over infergate's descriptor pool, for grpcio's server and the native routes alike."""
    _pool.add_grpc_service_protos()
    return reflection.aio.ReflectionServicer(REFLECTED_SERVICES, pool=_pool.POOL)
