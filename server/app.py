"""Server lifecycle: bind, serve, report readiness, and shut down in a fixed order."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from infergate.proto import _pool
from infergate.server import routes
from infergate.server.http2 import Http2Server
from infergate.server.protocol import SERVICE_NAME
from infergate.server.registry import ModelRegistry
from infergate.server.service import InferenceService, generic_handler
from infergate.server.telemetry.hub import Telemetry
from infergate.server.telemetry.options import TelemetryOptions
from infergate.server.workers import WorkerPool

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # graceful shutdown on either
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # largest request or response accepted, bytes


@dataclass(slots=True)
class ServerOptions:
    model_repository: Path
    grpc_address: str = "127.0.0.1:8001"
    metrics_address: str | None = "127.0.0.1:8002"  # None: no metrics endpoint
    model_control_mode: str = "none"  # "none": load everything at start; "explicit": only --load-model
    load_models: tuple[str, ...] = ()  # in explicit mode, models to load at start ("*" = all)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    exit_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests
    workers: int = 1  # gRPC front-end processes; 1 serves gRPC in this process
    transport: str = "native"  # in-process gRPC: "native" (server/http2.py) or "grpcio"
    loop: str = "auto"  # event loop of the worker processes (see server/loop.py)
    log_level: str = "info"  # of the worker processes
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)


class InferenceServer:
    """One infergate process: gRPC service, health, reflection, metrics."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.registry = ModelRegistry(options.model_repository)
        self.telemetry = Telemetry(self.registry, options.telemetry)
        self.service = InferenceService(self.registry, is_explicit_control=options.model_control_mode == "explicit",
                                        telemetry=self.telemetry)
        self.health = health.aio.HealthServicer()
        self.grpc_port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._workers: WorkerPool | None = None
        self._http2: Http2Server | None = None
        self._native_health = routes.Health()
        self._should_exit = asyncio.Event()

    async def start(self) -> None:
        """Loads the models, then binds and starts serving; raises if the address cannot be bound."""
        options = self.options
        self.registry.discover()
        if options.model_control_mode == "explicit":
            names = None if "*" in options.load_models else list(options.load_models)
            if names is not None:
                await self.registry.load_all(names)
            else:
                await self.registry.load_all()
        else:
            await self.registry.load_all()
        self.telemetry.attach_all()
        self.service.is_ready = True  # loading is done; nothing can call before the port is bound
        if options.workers > 1:
            self._workers = WorkerPool(self.service, options.workers, options.grpc_address,
                                       max_message_bytes=options.max_message_bytes,
                                       exit_timeout_s=options.exit_timeout_s, loop_name=options.loop,
                                       log_level=options.log_level)
            address = await self._workers.start()
            self.grpc_port = int(address.rpartition(":")[2])
        elif options.transport == "native":
            self._http2 = Http2Server(routes.build_routes(self.service, self._native_health), options.max_message_bytes)
            try:
                self.grpc_port = await self._http2.start(options.grpc_address)
            except (OSError, ValueError) as exc:
                raise OSError(f"cannot listen on --grpc-address {options.grpc_address}: {exc}") from None
            for service in ("", SERVICE_NAME):
                self._native_health.set(service, routes.SERVING)
        else:
            await self._start_grpc()
        if options.metrics_address:
            from infergate.server.metrics import start_metrics_server

            host, _, port = options.metrics_address.rpartition(":")
            self.metrics_port = start_metrics_server(host or "127.0.0.1", int(port), self.registry, self.telemetry)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        where = options.grpc_address if options.grpc_address.startswith("unix:") else \
            f"{options.grpc_address.rpartition(':')[0]}:{self.grpc_port}"
        ready = sum(1 for e in self.registry.entries() if e.versions)
        logger.info("infergate %s serving %d/%d models; gRPC on %s%s (%s)", self.service.version, ready,
                    len(self.registry.entries()), where,
                    f"; metrics on http://{options.metrics_address.rpartition(':')[0]}:{self.metrics_port}/metrics"
                    if options.metrics_address else "",
                    f"{options.workers} grpcio worker processes" if options.workers > 1
                    else f"{options.transport} transport")

    async def _start_grpc(self) -> None:
        """Serves gRPC in this process (--workers 1)."""
        options = self.options
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ])
        self._server.add_generic_rpc_handlers((generic_handler(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        _pool.add_grpc_service_protos()
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server, pool=_pool.POOL)
        try:
            self.grpc_port = self._server.add_insecure_port(options.grpc_address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on --grpc-address {options.grpc_address}: {exc}") from None
        await self._server.start()

    async def stop(self) -> None:
        """Stops accepting, drains in-flight requests under exit_timeout_s, cancels the rest."""
        self.service.is_ready = False
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.options.exit_timeout_s)
        if self._workers is not None:
            await self._workers.stop()
        if self._http2 is not None:
            self._native_health.set_all(routes.NOT_SERVING)
            self._native_health.end_watches()
            await self._http2.stop(self.options.exit_timeout_s)
        await self.registry.stop(drain_timeout_s=1.0)
        self.telemetry.shutdown()
        logger.info("infergate stopped")

    async def serve(self) -> None:
        """Runs until SIGINT/SIGTERM."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._should_exit.set)
        await self.start()
        await self._should_exit.wait()
        logger.info("shutting down (waiting up to %.0f s for in-flight requests)", self.options.exit_timeout_s)
        await self.stop()
