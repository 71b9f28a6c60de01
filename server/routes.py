"""What infergate's HTTP/2 transport serves: the inference service, grpc.health.v1 and server reflection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from infergate.proto import _pool
from infergate.server.calls import Aborted, bytes_methods, parse_or_abort
from infergate.server.protocol import METHOD_NAMES, SERVICE_NAME
from infergate.server.service import InferenceService
from infergate.server.transports.native import Route, Stream

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = (health_pb2.HealthCheckResponse.SERVING,
                                         health_pb2.HealthCheckResponse.NOT_SERVING,
                                         health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)


class Health:
    """grpc.health.v1.Health: Check and Watch, over statuses the server sets as it starts and stops."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.watchers: dict[str, set[Stream]] = {}
        self.is_ending = False  # shutting down: a new Watch gets the status and ends at once

    def set(self, service: str, status: int) -> None:
        self.statuses[service] = status
        reply = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        for stream in list(self.watchers.get(service, ())):
            stream.send_message(reply)

    def set_all(self, status: int) -> None:
        for service in list(self.statuses):
            self.set(service, status)

    async def check(self, body: bytes, context: Any) -> bytes:
        request = parse_or_abort(health_pb2.HealthCheckRequest.FromString, body, "health Check")
        if request.service not in self.statuses:
            raise Aborted(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        response = health_pb2.HealthCheckResponse(status=self.statuses[request.service])
        return response.SerializeToString()  # type: ignore[no-any-return]

    def watch(self, body: bytes, stream: Stream) -> None:
        try:
            request = health_pb2.HealthCheckRequest.FromString(body)
        except DecodeError as exc:
            stream.finish(grpc.StatusCode.INVALID_ARGUMENT.value[0], f"the health Watch request is not valid: {exc}")
            return
        service = request.service
        watchers = self.watchers.setdefault(service, set())
        watchers.add(stream)
        stream.on_close = lambda: watchers.discard(stream)
        status = self.statuses.get(service, SERVICE_UNKNOWN)
        stream.send_message(health_pb2.HealthCheckResponse(status=status).SerializeToString())
        if self.is_ending:
            stream.finish()

    def end_watches(self) -> None:
        """At shutdown, after the last status went out: end every Watch call cleanly."""
        self.is_ending = True
        for watchers in self.watchers.values():
            for stream in list(watchers):
                stream.finish()


def _reflection() -> Callable[[bytes, Any], Awaitable[bytes]]:
    _pool.add_grpc_service_protos()
    servicer = reflection.ReflectionServicer(
        (SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), pool=_pool.POOL)

    async def call(body: bytes, context: Any) -> bytes:
        request = parse_or_abort(reflection_pb2.ServerReflectionRequest.FromString, body, "reflection")
        response = next(servicer.ServerReflectionInfo(iter((request,)), context))
        return response.SerializeToString()  # type: ignore[no-any-return]

    return call


def build_routes(service: InferenceService, health: Health) -> dict[bytes, Route]:
    """Every path the transport answers, by the :path header a gRPC client sends."""
    routes: dict[bytes, Route] = {}
    for name, method in zip(METHOD_NAMES, bytes_methods(service), strict=True):
        path = f"/{SERVICE_NAME}/{name}".encode()
        routes[path] = Route(per_message=method) if name == "ModelStreamInfer" else Route(unary=method)
    routes[f"/{HEALTH_SERVICE}/Check".encode()] = Route(unary=health.check)
    routes[f"/{HEALTH_SERVICE}/Watch".encode()] = Route(watch=health.watch)
    routes[f"/{reflection.SERVICE_NAME}/ServerReflectionInfo".encode()] = Route(per_message=_reflection())
    return routes
