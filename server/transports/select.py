"""Picks the transport a server runs: the native HTTP/2 one, grpcio in-process, or grpcio worker processes."""

from __future__ import annotations

from infergate.server import routes
from infergate.server.calls import bytes_methods
from infergate.server.health import HealthState
from infergate.server.service import InferenceService, generic_handler
from infergate.server.transports.edge import Edge, Transport
from infergate.server.transports.grpcio import GrpcioTransport

TRANSPORTS = ("native", "grpcio")  # --transport choices for the process that serves gRPC itself


class NativeTransport:
    """`--transport native`: infergate's own HTTP/2 (server/transports/native.py) on this event loop."""

    def __init__(self, edge: Edge, service: InferenceService) -> None:
        self.health = HealthState()
        self.server = routes.edge_server(bytes_methods(service), self.health, edge)

    async def start(self, address: str) -> int:
        return await routes.listen(self.server, address)

    async def set_serving(self, is_serving: bool) -> None:
        self.health.set_serving(is_serving)

    async def stop(self, grace_s: float) -> None:
        self.health.end()
        await self.server.stop(grace_s)


def make_transport(name: str, workers: int, edge: Edge, service: InferenceService, *, loop_name: str,
                   log_level: str, exit_timeout_s: float) -> Transport:
    """--workers N > 1 runs --transport in N front-end processes; otherwise this process serves with it."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}; expected one of {', '.join(TRANSPORTS)}")
    if workers > 1:
        from infergate.server.workers import WorkerPool

        return WorkerPool(service, workers, edge, exit_timeout_s=exit_timeout_s, loop_name=loop_name,
                          log_level=log_level, transport=name)
    if name == "native":
        return NativeTransport(edge, service)
    if name == "grpcio":
        return GrpcioTransport(edge, generic_handler(service))
    raise ValueError(f"unknown transport {name!r}; expected one of {', '.join(TRANSPORTS)}")
