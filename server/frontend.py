"""A front-end worker process: terminates gRPC on the shared port and forwards every call to the engine.

With `infergate serve --workers N` (N > 1), N of these share the gRPC port (SO_REUSEPORT) so the
HTTP/2 and protobuf framing, which bound a single Python process, runs on every core. Each speaks
--transport: the native HTTP/2 transport (the default) or grpcio. Request bodies cross to the engine
as the bytes the client sent, and responses come back serialized, so a worker never parses a tensor.
Models, batchers, statistics and metrics stay in the engine, one copy; health and reflection are
answered in the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from infergate.server import ipc, routes
from infergate.server.calls import Aborted, BytesMethod
from infergate.server.health import HealthState
from infergate.server.loop import LOOPS, in_request_order, run_on_loop
from infergate.server.protocol import METHOD_NAMES, SERVICE_NAME
from infergate.server.transports.edge import Edge, edge_from_environment
from infergate.server.transports.grpcio import DrainInterceptor, bind, drain, grpc_server

logger = logging.getLogger(__name__)

STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class EngineLink(ipc.FramedProtocol):
    """The worker's end of the Unix socket to the engine: one future per call in flight."""

    def __init__(self) -> None:
        super().__init__(ipc.REPLY, lambda fields: fields[2])
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.closed = asyncio.get_running_loop().create_future()
        self.on_health: Callable[[bool], None] = lambda is_serving: None  # the engine's word on health
        self._ids = itertools.count(1)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_result((grpc.StatusCode.UNAVAILABLE.value[0], b"the infergate engine process has exited"))
        self.pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def on_frame(self, fields: tuple[Any, ...], body: bytes) -> None:
        if fields[0] == ipc.HEALTH_CALL_ID:
            self.on_health(bool(fields[1]))
            return
        future = self.pending.pop(fields[0], None)
        if future is not None and not future.done():
            future.set_result((fields[1], body))

    def send(self, kind: int, method: int, body: bytes, timeout_s: float = ipc.NO_TIMEOUT,
             metadata: bytes = b"", call_id: int = 0) -> None:
        assert self.writer is not None
        self.writer.write(ipc.REQUEST.pack(call_id, kind, method, len(metadata), len(body), timeout_s), metadata, body)

    async def call(self, kind: int, method: int, body: bytes, timeout_s: float, metadata: bytes) -> tuple[int, bytes]:
        if self.closed.done():
            return grpc.StatusCode.UNAVAILABLE.value[0], b"the infergate engine process has exited"
        call_id = next(self._ids)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        self.send(kind, method, body, timeout_s, metadata, call_id)
        try:
            return await future
        except asyncio.CancelledError:
            if self.pending.pop(call_id, None) is not None:
                self.send(ipc.CANCEL, method, b"", call_id=call_id)
            raise


def _call_context(context: Any) -> tuple[float, bytes]:
    """The client's remaining time and the trace headers, the only parts of the call the engine needs."""
    remaining_s = context.time_remaining()
    forwarded = tuple((k, v) for k, v in context.invocation_metadata() or () if k in ipc.FORWARDED_METADATA)
    return (ipc.NO_TIMEOUT if remaining_s is None else remaining_s), ipc.encode_metadata(forwarded)


def _unary(link: EngineLink, method: int) -> Callable[[bytes, Any], Awaitable[bytes]]:
    async def call(request: bytes, context: Any) -> bytes:
        timeout_s, metadata = _call_context(context)
        code, body = await link.call(ipc.CALL, method, request, timeout_s, metadata)
        if code:
            await context.abort(STATUS_BY_VALUE[code], body.decode())
        return body

    call.__name__ = METHOD_NAMES[method]
    return call


def _stream(link: EngineLink, method: int) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]:
    """ModelStreamInfer, pipelined as in the engine: each request goes on as it arrives, responses in order."""

    async def call(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        def start(request: bytes) -> Awaitable[tuple[int, bytes]]:
            timeout_s, metadata = _call_context(context)
            return link.call(ipc.STREAM_ITEM, method, request, timeout_s, metadata)

        async for code, body in in_request_order(requests, start):
            if code:
                await context.abort(STATUS_BY_VALUE[code], body.decode())
            yield body

    return call


def _stream_item(link: EngineLink, method: int) -> BytesMethod:
    """One ModelStreamInfer request, for the native transport (which pipelines the stream itself)."""

    async def call(request: bytes, context: Any) -> bytes:
        timeout_s, metadata = _call_context(context)
        code, body = await link.call(ipc.STREAM_ITEM, method, request, timeout_s, metadata)
        if code:
            raise Aborted(STATUS_BY_VALUE[code], body.decode())
        return body

    return call


def forwarding_methods(link: EngineLink) -> list[BytesMethod]:
    """Every method of inference.GRPCInferenceService as the native transport's routes take them."""
    return [_stream_item(link, index) if name == "ModelStreamInfer" else _unary(link, index)
            for index, name in enumerate(METHOD_NAMES)]


def forwarding_handler(link: EngineLink) -> grpc.GenericRpcHandler:
    """Every method of inference.GRPCInferenceService, bytes in and bytes out."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for index, name in enumerate(METHOD_NAMES):
        if name == "ModelStreamInfer":
            handlers[name] = grpc.stream_stream_rpc_method_handler(_stream(link, index))
        else:
            handlers[name] = grpc.unary_unary_rpc_method_handler(_unary(link, index))
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class _NativeFront:
    """The native HTTP/2 transport on the shared port, its inference calls forwarded."""

    def __init__(self, edge: Edge, link: EngineLink, health: HealthState) -> None:
        self.server = routes.edge_server(forwarding_methods(link), health, edge)

    async def start(self, grpc_address: str) -> None:
        await routes.listen(self.server, grpc_address, is_port_shared=True)

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)


class _GrpcioFront:
    """grpcio on the shared port, its inference calls forwarded."""

    def __init__(self, edge: Edge, link: EngineLink, health: HealthState) -> None:
        self.edge = edge
        self.draining = DrainInterceptor()
        self.server = grpc_server(edge, forwarding_handler(link), health, is_port_shared=True, draining=self.draining)

    async def start(self, grpc_address: str) -> None:
        bind(self.server, grpc_address, self.edge)
        await self.server.start()

    async def stop(self, grace_s: float) -> None:
        await drain(self.server, self.draining, grace_s)


async def serve(index: int, engine: str, grpc_address: str, exit_timeout_s: float, transport: str = "native") -> int:
    """Connects to the engine, listens on the shared port, and runs until a signal or the engine's exit."""
    loop = asyncio.get_running_loop()
    edge = edge_from_environment()
    loop.add_signal_handler(signal.SIGHUP, edge.access.reload_tokens)  # before anything: SIGHUP must never kill
    _, link = await loop.create_unix_connection(EngineLink, sock=ipc.connect(engine))
    health = HealthState()  # each worker answers health itself: what the engine says, NOT_SERVING as it stops
    link.on_health = health.set_serving
    front = _NativeFront(edge, link, health) if transport == "native" else _GrpcioFront(edge, link, health)
    try:
        await front.start(grpc_address)
    except OSError as exc:
        logger.error("worker %d: %s", index, exc)
        return 1
    link.send(ipc.HELLO, 0, f"{index} {os.getpid()}".encode())  # the engine answers with the health to serve

    should_exit = asyncio.Event()
    # The engine alone decides when to drain (after its --shutdown-delay-s) and says so with SIGTERM; a
    # terminal's Ctrl-C reaches the whole process group, and must not make workers refuse calls early.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, should_exit.set)
    stopping = asyncio.ensure_future(should_exit.wait())
    done, _ = await asyncio.wait((stopping, link.closed), return_when=asyncio.FIRST_COMPLETED)
    is_engine_gone = link.closed in done
    stopping.cancel()
    health.end()
    if is_engine_gone:
        logger.error("worker %d: the engine process has gone; exiting", index)
        await front.stop(0)
        return 1
    logger.info("worker %d: draining: refusing new calls, waiting up to %g s for those in flight", index,
                exit_timeout_s)
    await front.stop(exit_timeout_s)  # the engine still answers what is forwarded meanwhile
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.server.frontend")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--engine", required=True, help="the engine's Unix socket ('@name': abstract)")
    parser.add_argument("--grpc-address", required=True)
    parser.add_argument("--exit-timeout-s", type=float, default=30.0)
    parser.add_argument("--loop", choices=LOOPS, default="auto")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--transport", choices=("native", "grpcio"), default="native")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s")
    return run_on_loop(serve(args.index, args.engine, args.grpc_address, args.exit_timeout_s, args.transport),
                       args.loop)


if __name__ == "__main__":
    sys.exit(main())
