"""grpcio's server as a transport (in-process, and in each --workers process): one set-up for both."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from infergate.proto import _pool
from infergate.server.access import AccessInterceptor
from infergate.server.protocol import SERVICE_NAME
from infergate.server.tls import grpc_credentials
from infergate.server.transports.edge import Edge
from infergate.server.transports.h2_limits import Http2Limits

logger = logging.getLogger(__name__)

SERVICES = ("", SERVICE_NAME)  # the health-checked names: the whole server and the inference service


def grpc_server(edge: Edge, handler: grpc.GenericRpcHandler, *, is_port_shared: bool) -> grpc.aio.Server:
    """A grpc.aio server with the edge's limits and access policy, the service handler, health and reflection."""
    server = grpc.aio.server(
        interceptors=() if edge.access.is_open else (AccessInterceptor(edge.access),),
        options=[
            ("grpc.max_receive_message_length", edge.max_message_bytes),
            ("grpc.max_send_message_length", edge.max_message_bytes),
            # --workers share the port (the engine checked it was free); a lone server must fail instead.
            ("grpc.so_reuseport", 1 if is_port_shared else 0),
            *keepalive_options(edge.limits),
        ])
    server.add_generic_rpc_handlers((handler,))
    return server


def keepalive_options(limits: Http2Limits) -> list[tuple[str, int]]:
    """The native transport's keepalive, idle and stream limits in grpc-core's channel arguments."""
    options = [
        ("grpc.keepalive_time_ms", int(limits.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", int(limits.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", limits.max_pings_without_data),
        # grpc-core's name for the server's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
        ("grpc.http2.min_ping_interval_without_data_ms", int(limits.min_recv_ping_interval_without_data_s * 1000)),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
    ]
    if limits.idle_timeout_s:
        options.append(("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)))
    return options


def add_health_and_reflection(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    _pool.add_grpc_service_protos()
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
                                        pool=_pool.POOL)
    return servicer


def bind(server: grpc.aio.Server, address: str, edge: Edge) -> int:
    """Adds the listening port, with TLS when the edge has it; raises OSError naming the address."""
    try:
        if edge.tls is not None:
            return int(server.add_secure_port(address, grpc_credentials(edge.tls)))
        return int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on --grpc-address {address}: {exc}") from None


async def set_health(servicer: health.aio.HealthServicer, is_serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if is_serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in SERVICES:
        await servicer.set(service, status)


class GrpcioTransport:
    """`--transport grpcio`: grpc.aio in this process, the reference implementation."""

    def __init__(self, edge: Edge, handler: grpc.GenericRpcHandler) -> None:
        self.server = grpc_server(edge, handler, is_port_shared=False)
        self.health = add_health_and_reflection(self.server)
        self.edge = edge

    async def start(self, address: str) -> int:
        port = bind(self.server, address, self.edge)
        await self.server.start()
        return port

    async def set_serving(self, is_serving: bool) -> None:
        await set_health(self.health, is_serving)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

