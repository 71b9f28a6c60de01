"""What infergate's HTTP/2 transport serves: the inference service, grpc.health.v1 and server reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from grpc_reflection.v1alpha import reflection, reflection_pb2

from infergate.models.errors import InferError
from infergate.server.calls import BytesMethod, parse_or_abort
from infergate.server.errors import code_of
from infergate.server.health import HEALTH_SERVICE, HealthState
from infergate.server.protocol import METHOD_NAMES, SERVICE_NAME
from infergate.server.reflection import V1_SERVICE_NAME, reflection_servicer
from infergate.server.transports.edge import Edge
from infergate.server.transports.native import Http2Server, Route, Stream


def _check(health: HealthState) -> Callable[[bytes, Any], Awaitable[bytes]]:
    async def call(body: bytes, context: Any) -> bytes:
        return health.check(body)  # its InferErrors reach the client as their status, as any route's do

    return call


def _watch(health: HealthState) -> Callable[[bytes, Stream], None]:
    """Watch on a stream the route writes to itself: each reply as a message, the end as OK trailers."""

    def watch(body: bytes, stream: Stream) -> None:
        def on_reply(reply: bytes | None) -> None:
            if reply is None:
                stream.finish()
            else:
                stream.send_message(reply)

        try:
            stream.on_close = health.watch(body, on_reply)
        except InferError as exc:
            stream.finish(code_of(exc).value[0], exc.message)

    return watch


def _reflection() -> Callable[[bytes, Any], Awaitable[bytes]]:
    servicer = reflection_servicer()

    async def call(body: bytes, context: Any) -> bytes:
        request = parse_or_abort(reflection_pb2.ServerReflectionRequest.FromString, body, "reflection")

        async def requests() -> AsyncIterator[Any]:
            yield request

        # One request in, one response out: the servicer's generator runs to its end, so nothing is left open.
        (response,) = [response async for response in servicer.ServerReflectionInfo(requests(), context)]
        return response.SerializeToString()  # type: ignore[no-any-return]

    return call


def edge_server(methods: list[BytesMethod], health: HealthState, edge: Edge) -> Http2Server:
    """The native HTTP/2 server of these methods, with the edge's message limit, HTTP/2 budgets, TLS and access
    policy: the engine's (--transport native) and each --workers front end's."""
    return Http2Server(build_routes(methods, health), edge.max_message_bytes, limits=edge.limits,
                       ssl_context=edge.ssl_context, access=None if edge.access.is_open else edge.access)


async def listen(server: Http2Server, address: str, is_port_shared: bool = False) -> int:
    """Starts the server on --grpc-address; returns the TCP port. Raises OSError naming the flag and the address."""
    try:
        return await server.start(address, is_port_shared)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot listen on --grpc-address {address}: {exc}") from None


def build_routes(methods: list[BytesMethod], health: HealthState) -> dict[bytes, Route]:
    """Every path the transport answers, by the :path header a gRPC client sends: the inference service's
    methods by index (the service's own, calls.bytes_methods, or a worker's that forward them to the engine),
    then health and reflection, answered where the connection is."""
    routes: dict[bytes, Route] = {}
    for name, method in zip(METHOD_NAMES, methods, strict=True):
        path = f"/{SERVICE_NAME}/{name}".encode()
        routes[path] = Route(per_message=method) if name == "ModelStreamInfer" else Route(unary=method)
    routes[f"/{HEALTH_SERVICE}/Check".encode()] = Route(unary=_check(health))
    routes[f"/{HEALTH_SERVICE}/Watch".encode()] = Route(watch=_watch(health))
    reflect = _reflection()  # one servicer for v1alpha and v1: their messages are the same bytes
    for reflection_service in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        routes[f"/{reflection_service}/ServerReflectionInfo".encode()] = Route(per_message=reflect)
    return routes
