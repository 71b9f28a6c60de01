"""Server lifecycle: bind, serve, report readiness, and shut down in a fixed order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from infergate.server.registry import ModelRegistry
from infergate.server.service import InferenceService
from infergate.server.telemetry.hub import Telemetry
from infergate.server.telemetry.options import TelemetryOptions
from infergate.server.tls import TlsOptions
from infergate.server.transports.edge import Edge, Transport
from infergate.server.transports.h2_limits import DEFAULT_LIMITS, Http2Limits
from infergate.server.transports.select import make_transport
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
    tls: TlsOptions | None = None  # None: plaintext
    token_file: Path | None = None  # --grpc-auth-token-file: bearer tokens, one per line
    restricted_protocols: tuple[str, ...] = ()  # --grpc-restricted-protocol values
    socket_mode: int = 0o600  # permission bits of a unix: --grpc-address socket
    http2_limits: Http2Limits = DEFAULT_LIMITS  # budgets and timeouts (keepalive ones apply to grpcio too)
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)


class InferenceServer:
    """One infergate process: gRPC service, health, reflection, metrics."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.registry = ModelRegistry(options.model_repository)
        self.telemetry = Telemetry(self.registry, options.telemetry)
        self.service = InferenceService(self.registry, is_explicit_control=options.model_control_mode == "explicit",
                                        telemetry=self.telemetry)
        self.edge = Edge(options.max_message_bytes, options.tls, options.token_file, options.restricted_protocols,
                         options.http2_limits)
        self.grpc_port = 0
        self.metrics_port = 0
        self.transport: Transport | None = None
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
        self.transport = make_transport(options.transport, options.workers, self.edge, self.service,
                                        loop_name=options.loop, log_level=options.log_level,
                                        exit_timeout_s=options.exit_timeout_s)
        self.grpc_port = await self._listen(self.transport, options.grpc_address)
        await self.transport.set_serving(True)
        if options.metrics_address:
            from infergate.server.metrics import start_metrics_server

            host, _, port = options.metrics_address.rpartition(":")
            self.metrics_port = start_metrics_server(host or "127.0.0.1", int(port), self.registry, self.telemetry)
        where = options.grpc_address if options.grpc_address.startswith("unix:") else \
            f"{options.grpc_address.rpartition(':')[0]}:{self.grpc_port}"
        ready = sum(1 for e in self.registry.entries() if e.versions)
        logger.info("infergate %s serving %d/%d models; gRPC on %s%s (%s%s%s)", self.service.version, ready,
                    len(self.registry.entries()), where,
                    f"; metrics on http://{options.metrics_address.rpartition(':')[0]}:{self.metrics_port}/metrics"
                    if options.metrics_address else "",
                    f"{options.workers} grpcio worker processes" if options.workers > 1
                    else f"{options.transport} transport",
                    ", mutual TLS" if options.tls and options.tls.is_mutual else ", TLS" if options.tls else "",
                    "" if self.edge.access.is_open else ", access policy on")

    async def _listen(self, transport: Transport, address: str) -> int:
        """Starts the transport; a Unix socket is created with --grpc-socket-mode (0600 unless told)."""
        if not address.startswith("unix:"):
            return await transport.start(address)
        path = address[len("unix:"):]
        path = path[2:] if path.startswith("//") else path
        # The umask closes the window between bind() and chmod(): the socket is never wider than 0600.
        previous = os.umask(0o177)
        try:
            port = await transport.start(address)
        finally:
            os.umask(previous)
        os.chmod(path, self.options.socket_mode)
        return port

    def reload_tokens(self) -> None:
        """SIGHUP: re-read --grpc-auth-token-file here and in every worker process."""
        self.edge.access.reload_tokens()
        if isinstance(self.transport, WorkerPool):
            self.transport.reload_tokens()

    async def stop(self) -> None:
        """Stops accepting, drains in-flight requests under exit_timeout_s, cancels the rest."""
        self.service.is_ready = False
        if self.transport is not None:
            await self.transport.set_serving(False)
            await self.transport.stop(self.options.exit_timeout_s)
        await self.registry.stop(drain_timeout_s=1.0)
        self.telemetry.shutdown()
        logger.info("infergate stopped")

    async def serve(self) -> None:
        """Runs until SIGINT/SIGTERM."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tokens)
        await self.start()
        await self._should_exit.wait()
        logger.info("shutting down (waiting up to %.0f s for in-flight requests)", self.options.exit_timeout_s)
        await self.stop()
