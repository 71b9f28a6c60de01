"""grpcio's server as a transport (in-process, and in each --workers process): one set-up for both."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infergate.models.errors import InferError
from infergate.server.access import AccessInterceptor, _refusing_handler
from infergate.server.draining import DRAINING_MESSAGE, is_refused_while_draining
from infergate.server.errors import code_of
from infergate.server.health import HEALTH_SERVICE, HealthState
from infergate.server.reflection import V1_SERVICE_NAME, reflection_servicer
from infergate.server.tls import grpc_credentials
from infergate.server.transports.edge import Edge
from infergate.server.transports.h2_limits import Http2Limits

logger = logging.getLogger(__name__)


class DrainInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts the inference calls running, and once draining refuses new ones with UNAVAILABLE.

    grpcio's own stop() closes the listener at once, so a new call would get a refused connection and no
    reason; this lets the server keep listening and say why while the calls in flight finish."""

    def __init__(self) -> None:
        self.is_draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()  # set while no inference call runs
        self.idle.set()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not is_refused_while_draining(handler_call_details.method):
            return handler
        if self.is_draining:
            return _refusing_handler(handler, grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        return self._counted(handler)

    def _counted(self, handler: Any) -> Any:
        """The handler, counted from when its behaviour starts (a call that never starts must not hold the drain)."""
        codec = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)
        if handler.request_streaming and handler.response_streaming:
            async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for response in handler.stream_stream(requests, context):
                        yield response
                finally:
                    self._leave()

            return grpc.stream_stream_rpc_method_handler(stream, **codec)

        async def unary(request: Any, context: Any) -> Any:
            self._enter()
            try:
                return await handler.unary_unary(request, context)
            finally:
                self._leave()

        return grpc.unary_unary_rpc_method_handler(unary, **codec)  # the service has no other shapes

    def _enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()


async def drain(server: grpc.aio.Server, draining: DrainInterceptor, grace_s: float) -> None:
    """Refuses new calls, waits up to grace_s for those in flight, then stops grpcio with what is left of it."""
    draining.is_draining = True
    deadline_s = time.monotonic() + grace_s
    try:
        await asyncio.wait_for(draining.idle.wait(), grace_s)
    except asyncio.TimeoutError:
        logger.warning("%d calls still running after --exit-timeout-s %g; cancelling them",
                       draining.in_flight, grace_s)
    await server.stop(max(0.0, deadline_s - time.monotonic()))


def grpc_server(edge: Edge, handler: grpc.GenericRpcHandler, health: HealthState, *, is_port_shared: bool,
                draining: DrainInterceptor | None = None) -> grpc.aio.Server:
    """A grpc.aio server with the edge's limits and access policy, the service handler, health and reflection;
    with `draining`, drain() can stop it gracefully."""
    interceptors = () if edge.access.is_open else (AccessInterceptor(edge.access),)
    server = grpc.aio.server(
        interceptors=interceptors + ((draining,) if draining is not None else ()),
        options=[
            ("grpc.max_receive_message_length", edge.max_message_bytes),
            ("grpc.max_send_message_length", edge.max_message_bytes),
            # --workers share the port (the engine checked it was free); a lone server must fail instead.
            ("grpc.so_reuseport", 1 if is_port_shared else 0),
            *keepalive_options(edge.limits),
        ])
    server.add_generic_rpc_handlers((handler, health_handler(health)))
    reflect = reflection_servicer()
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflect, server)
    server.add_generic_rpc_handlers((reflection_v1_handler(reflect),))
    return server


def reflection_v1_handler(servicer: reflection_pb2_grpc.ServerReflectionServicer) -> grpc.GenericRpcHandler:
    """grpc.reflection.v1.ServerReflection on the v1alpha servicer: the two versions' messages are the same bytes."""
    return grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    })


def health_handler(health: HealthState) -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health over the transport-free state: bytes in, bytes out (the state parses them)."""

    async def check(body: bytes, context: Any) -> bytes:
        try:
            return health.check(body)
        except InferError as exc:
            await context.abort(code_of(exc), exc.message)
            raise  # abort raises; this only tells the type checker

    async def watch(body: bytes, context: Any) -> AsyncIterator[bytes]:
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()  # unbounded: a status changes a few times a run
        try:
            unsubscribe = health.watch(body, replies.put_nowait)
        except InferError as exc:
            await context.abort(code_of(exc), exc.message)
            raise
        try:
            while (reply := await replies.get()) is not None:
                yield reply
        finally:  # the end, or the client left (grpcio cancels this generator)
            unsubscribe()

    return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {
        "Check": grpc.unary_unary_rpc_method_handler(check),
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
    })


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


def bind(server: grpc.aio.Server, address: str, edge: Edge) -> int:
    """Adds the listening port, with TLS when the edge has it; raises OSError naming the address."""
    try:
        if edge.tls is not None:
            return int(server.add_secure_port(address, grpc_credentials(edge.tls)))
        return int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise OSError(f"cannot listen on --grpc-address {address}: {exc}") from None


class GrpcioTransport:
    """`--transport grpcio`: grpc.aio in this process, the reference implementation."""

    def __init__(self, edge: Edge, handler: grpc.GenericRpcHandler) -> None:
        self.health = HealthState()
        self.draining = DrainInterceptor()
        self.server = grpc_server(edge, handler, self.health, is_port_shared=False, draining=self.draining)
        self.edge = edge

    async def start(self, address: str) -> int:
        port = bind(self.server, address, self.edge)
        await self.server.start()
        return port

    async def set_serving(self, is_serving: bool) -> None:
        self.health.set_serving(is_serving)

    async def stop(self, grace_s: float) -> None:
        self.health.end()
        await drain(self.server, self.draining, grace_s)

