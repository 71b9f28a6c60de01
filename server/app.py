"""Server lifecycle: bind, serve, report readiness, and shut down in a fixed order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from infergate.server.addresses import (
    Address,
    AddressError,
    ListenError,
    Reservation,
    TcpAddress,
    parse_address,
    reserve,
)
from infergate.server.draining import second_signal_exit_status
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
    shutdown_delay_s: float = 0.0  # on SIGTERM/SIGINT, how long to keep serving while health says NOT_SERVING
    max_inflight_requests: int = 0  # server-wide inference requests in flight before refusing; 0 = no limit
    model_execution_timeout_s: float = 0.0  # longest one batch may run before its instance is replaced; 0 = none
    workers: int = 1  # gRPC front-end processes; 1 serves gRPC in this process
    transport: str = "native"  # in-process gRPC: "native" (server/http2.py) or "grpcio"
    loop: str = "auto"  # event loop of the worker processes (see server/loop.py)
    log_level: str = "info"  # of the worker processes
    tls: TlsOptions | None = None  # None: plaintext
    token_file: Path | None = None  # --grpc-auth-token-file: bearer tokens, one per line
    restricted_protocols: tuple[str, ...] = ()  # --grpc-restricted-protocol values
    socket_mode: int = 0o600  # permission bits of a unix: --grpc-address socket
    is_strict_readiness: bool = True  # --strict-readiness: ServerReady needs every model that should load
    http2_limits: Http2Limits = DEFAULT_LIMITS  # budgets and timeouts (keepalive ones apply to grpcio too)
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)


class InferenceServer:
    """One infergate process: gRPC service, health, reflection, metrics."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.registry = ModelRegistry(options.model_repository,
                                      execution_timeout_s=options.model_execution_timeout_s)
        self.telemetry = Telemetry(self.registry, options.telemetry)
        self.service = InferenceService(self.registry, is_explicit_control=options.model_control_mode == "explicit",
                                        telemetry=self.telemetry, is_strict_readiness=options.is_strict_readiness,
                                        max_inflight_requests=options.max_inflight_requests)
        self.edge = Edge(options.max_message_bytes, options.tls, options.token_file, options.restricted_protocols,
                         options.http2_limits)
        self.grpc_port = 0
        self.metrics_port = 0
        self.transport: Transport | None = None
        self._grpc: Reservation | None = None
        self._metrics: Reservation | None = None
        self._should_exit = asyncio.Event()

    def reserve_addresses(self) -> None:
        """Binds the gRPC and metrics ports (or checks the Unix socket path) before any model loads, so a bad
        or busy address costs no loading time; holds them until start() serves. Raises ListenError."""
        if self._grpc is not None:
            return
        options = self.options
        self._grpc = reserve(_parsed(options.grpc_address, "--grpc-address", allow_unix=True), "--grpc-address",
                             options.grpc_address)
        if options.metrics_address:
            # The metrics server (wsgiref) listens on IPv4 only.
            metrics = _parsed(options.metrics_address, "--metrics-address", allow_unix=False)
            try:
                self._metrics = reserve(metrics, "--metrics-address", options.metrics_address, family=socket.AF_INET)
            except ListenError:
                self._grpc.release()
                raise

    def startup_models(self) -> list[str]:
        """The models start-up loads: every one in the repository, or in explicit mode the --load-model ones."""
        options = self.options
        names = self.registry.discover()
        if options.model_control_mode == "explicit" and "*" not in options.load_models:
            return list(options.load_models)
        return names

    async def start(self) -> None:
        """Reserves the addresses, loads the models, then serves; raises ListenError or OSError."""
        options = self.options
        self.reserve_addresses()
        assert self._grpc is not None
        names = self.startup_models()
        self.service.expected_models = set(names)
        await self.registry.load_all(names)
        self.telemetry.attach_all()
        self.service.is_started = True  # loading is done; nothing can call before the port is bound
        self.transport = make_transport(options.transport, options.workers, self.edge, self.service,
                                        loop_name=options.loop, log_level=options.log_level,
                                        exit_timeout_s=options.exit_timeout_s)
        grpc = self._grpc.release()
        self.grpc_port = await self._listen(self.transport, grpc.text)
        await self.transport.set_serving(self.service.is_ready())
        self.service.on_readiness = self.transport.set_serving
        metrics = self._metrics.release() if self._metrics is not None else None
        if isinstance(metrics, TcpAddress):
            from infergate.server.metrics import start_metrics_server

            self.metrics_port = start_metrics_server(metrics.host, metrics.port, self.registry, self.telemetry)
        self._log_serving(grpc, metrics)

    def _log_serving(self, grpc: Address, metrics: Address | None) -> None:
        options = self.options
        where = TcpAddress(grpc.host, self.grpc_port).text if isinstance(grpc, TcpAddress) else grpc.text
        entries = self.registry.entries()
        logger.info("infergate %s serving %d/%d models; gRPC on %s%s (%s%s%s)", self.service.version,
                    sum(1 for e in entries if e.versions), len(entries), where,
                    f"; metrics on http://{metrics.host}:{self.metrics_port}/metrics"
                    if isinstance(metrics, TcpAddress) else "",
                    f"{options.workers} {options.transport} worker processes" if options.workers > 1
                    else f"{options.transport} transport",
                    ", mutual TLS" if options.tls and options.tls.is_mutual else ", TLS" if options.tls else "",
                    "" if self.edge.access.is_open else ", access policy on")
        if not self.service.is_ready():
            failed = sorted(name for name in self.service.expected_models if not self.registry.is_loaded(name))
            logger.warning("not ready: %s did not load (reasons in RepositoryIndex and above), so ServerReady is "
                           "false and health NOT_SERVING until they do; --strict-readiness false serves as ready "
                           "anyway", ", ".join(f"'{name}'" for name in failed))

    async def _listen(self, transport: Transport, address: str) -> int:
        """Starts the transport; a Unix socket is created with --grpc-socket-mode (0600 unless told)."""
        if not address.startswith("unix:"):
            return await transport.start(address)
        path = address[len("unix:"):]
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

    async def withdraw(self) -> None:
        """Shutdown's first step: ServerReady false and health NOT_SERVING for good, calls still served."""
        self.service.is_started = False
        self.service.on_readiness = None
        if self.transport is not None:
            await self.transport.set_serving(False)

    async def stop(self) -> None:
        """Withdraws, refuses new calls with UNAVAILABLE, drains in-flight ones under exit_timeout_s, cancels
        the rest."""
        await self.withdraw()
        if self.transport is not None:
            await self.transport.stop(self.options.exit_timeout_s)
        for reservation in (self._grpc, self._metrics):
            if reservation is not None:
                reservation.release()  # start() failed or never ran: free the ports
        await self.registry.stop(drain_timeout_s=1.0)
        self.telemetry.shutdown()
        logger.info("infergate stopped")

    async def serve(self) -> None:
        """Runs until SIGINT/SIGTERM."""
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tokens)
        await self.start()
        await self._should_exit.wait()
        await self.withdraw()
        delay_s = self.options.shutdown_delay_s
        if delay_s > 0:
            # Load balancers poll health: they need time to see NOT_SERVING and send traffic elsewhere.
            logger.info("health NOT_SERVING; still serving for --shutdown-delay-s %g before draining", delay_s)
            await asyncio.sleep(delay_s)
        logger.info("shutting down: refusing new calls, waiting up to %g s for in-flight requests "
                    "(a second SIGTERM/SIGINT exits at once)", self.options.exit_timeout_s)
        await self.stop()

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM/SIGINT starts the graceful shutdown; a second one during it exits at once."""
        if not self._should_exit.is_set():
            self._should_exit.set()
            return
        status = second_signal_exit_status(sig)
        logger.warning("second %s during shutdown: exiting at once with status %d; calls in flight are dropped",
                       sig.name, status)
        if isinstance(self.transport, WorkerPool):
            self.transport.kill()
        logging.shutdown()  # flushes the log: os._exit skips every other clean-up, on purpose
        os._exit(status)


def _parsed(text: str, flag: str, *, allow_unix: bool) -> Address:
    """The address a flag names (the command line checked it already; ServerOptions made in code may not be)."""
    try:
        return parse_address(text, allow_unix=allow_unix)
    except AddressError as exc:
        raise ListenError(f"{flag} {text!r}: {exc}") from None
