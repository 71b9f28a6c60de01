"""The engine's side of `--workers N`: start the front-end processes and serve the calls they forward.

The engine (the `infergate serve` process) keeps the one copy of the models, batchers, statistics
and metrics, so batching spans every worker's connections and ModelStatistics counts them all.
Each worker (`infergate.server.frontend`) speaks gRPC on the shared port and forwards raw request
bytes here over a Unix socket; calls run through the same InferenceService handlers as in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from infergate.server import ipc
from infergate.server.calls import OK, ForwardedContext, bytes_methods, status_for
from infergate.server.service import InferenceService
from infergate.server.transports.edge import Edge

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # how long start() waits for every worker to listen
RESPAWN_DELAY_S = 1.0  # pause before replacing a worker that died, so a crash loop does not spin


class WorkerConnection(ipc.FramedProtocol):
    """One worker's socket: runs each forwarded call as a task and writes its reply when done."""

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__(ipc.REQUEST, lambda fields: fields[3] + fields[4])
        self.pool = pool
        self.methods = pool.methods
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.worker_index = -1

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.calls.values():
            task.cancel()  # the worker is gone, and with it every client waiting on these calls
        self.calls.clear()
        self.pool.worker_lost(self)

    def on_frame(self, fields: tuple[Any, ...], data: bytes) -> None:
        call_id, kind, method, metadata_bytes, _, timeout_s = fields
        if kind == ipc.CANCEL:
            if (task := self.calls.pop(call_id, None)) is not None:
                task.cancel()
            return
        if kind == ipc.HELLO:
            index, pid = data.decode().split()
            self.worker_index = int(index)
            self.pool.worker_ready(self, int(index), int(pid))
            return
        metadata = ipc.decode_metadata(data[:metadata_bytes]) if metadata_bytes else ()
        body = data[metadata_bytes:] if metadata_bytes else data
        self.calls[call_id] = asyncio.ensure_future(self._serve(call_id, method, timeout_s, metadata, body))

    async def _serve(self, call_id: int, method_index: int, timeout_s: float,
                     metadata: tuple[tuple[str, str], ...], body: bytes) -> None:
        try:
            response = await self.methods[method_index](body, ForwardedContext(timeout_s, metadata))
        except asyncio.CancelledError:
            return  # the worker asked for it, or is gone: nobody is waiting for a reply
        except Exception as exc:
            code, message = status_for(exc)
            self._reply(call_id, code, message.encode())
        else:
            self._reply(call_id, OK, response)
        finally:
            self.calls.pop(call_id, None)

    def send_health(self, is_serving: bool) -> None:
        self._reply(ipc.HEALTH_CALL_ID, int(is_serving), b"")

    def _reply(self, call_id: int, code: int, body: bytes) -> None:
        if self.writer is not None:
            self.writer.write(ipc.REPLY.pack(call_id, code, len(body)), body)


def resolve_tcp_address(address: str) -> str:
    """HOST:PORT with port 0 replaced by a free port, after checking nothing listens there yet.

    The workers bind with SO_REUSEPORT, which would also let them join another server's group on
    the same port; binding once here without it turns that into the usual 'address in use'."""
    if address.startswith("unix:"):
        raise OSError(f"--workers > 1 needs a TCP --grpc-address, not {address}: processes cannot share "
                      "a Unix socket path; use --workers 1 for a sidecar socket")
    host, _, port = address.rpartition(":")
    bare_host = host.strip("[]") or "0.0.0.0"
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(bare_host, int(port), type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, ValueError) as exc:
        raise OSError(f"cannot listen on --grpc-address {address}: {exc}") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise OSError(f"cannot listen on --grpc-address {address}: {exc.strerror}") from None
        chosen = probe.getsockname()[1]
    return f"{host}:{chosen}"


class WorkerPool:
    """Starts N front-end workers, replaces any that die, and stops them first at shutdown."""

    def __init__(self, service: InferenceService, count: int, edge: Edge, *, exit_timeout_s: float, loop_name: str,
                 log_level: str, transport: str = "native") -> None:
        self.service = service
        self.methods = bytes_methods(service)
        self.count = count
        self.grpc_address = ""
        self.edge = edge
        self.exit_timeout_s = exit_timeout_s
        self.loop_name = loop_name
        self.log_level = log_level
        self.transport = transport  # what each worker speaks gRPC with: native or grpcio
        self.engine_name = f"@infergate-{os.getpid()}-{os.urandom(4).hex()}"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.connections: dict[int, WorkerConnection] = {}
        self.is_stopping = False
        self.is_serving = False  # the health every worker answers, a new one as it says HELLO
        self._ready: dict[int, asyncio.Future[None]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self, address: str) -> int:
        """Binds the engine socket, starts the workers listening on address, and returns its TCP port."""
        self.grpc_address = resolve_tcp_address(address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: WorkerConnection(self), sock=ipc.listen(self.engine_name))
        for index in range(self.count):
            self._spawn(index)
        try:
            await asyncio.wait_for(self._all_ready(), START_TIMEOUT_S)
        except BaseException:
            await self.stop(0.0)
            raise
        self._watch = asyncio.ensure_future(self._watch_workers())
        return int(self.grpc_address.rpartition(":")[2])

    async def _all_ready(self) -> None:
        while pending := [(i, f) for i, f in self._ready.items() if not f.done()]:
            for index, _ in pending:
                code = self.processes[index].poll()
                if code is not None:
                    raise OSError(f"front-end worker {index} exited with code {code} before listening "
                                  f"on {self.grpc_address} (its log line above says why)")
            await asyncio.wait([f for _, f in pending], timeout=0.1)

    def _spawn(self, index: int) -> None:
        self._ready[index] = asyncio.get_running_loop().create_future()
        self.processes[index] = subprocess.Popen([
            sys.executable, "-m", "infergate.server.frontend", "--index", str(index),
            "--engine", self.engine_name, "--grpc-address", self.grpc_address,
            "--exit-timeout-s", str(self.exit_timeout_s), "--loop", self.loop_name, "--log-level", self.log_level,
            "--transport", self.transport,
        ], stdin=subprocess.DEVNULL, env={**os.environ, **self.edge.to_environment()})

    def worker_ready(self, connection: WorkerConnection, index: int, pid: int) -> None:
        self.connections[index] = connection
        connection.send_health(self.is_serving)
        logger.debug("front-end worker %d (pid %d) is listening", index, pid)
        if (future := self._ready.get(index)) is not None and not future.done():
            future.set_result(None)

    def worker_lost(self, connection: WorkerConnection) -> None:
        if self.connections.get(connection.worker_index) is connection:
            del self.connections[connection.worker_index]

    async def _watch_workers(self) -> None:
        """Replaces a worker that exits while the server runs (a crash must not shrink the server)."""
        while not self.is_stopping:
            await asyncio.sleep(0.5)
            for index, process in list(self.processes.items()):
                if self.is_stopping or (code := process.poll()) is None:
                    continue
                logger.error("front-end worker %d (pid %d) exited with code %d; starting a new one",
                             index, process.pid, code)
                await asyncio.sleep(RESPAWN_DELAY_S)
                if not self.is_stopping:
                    self._spawn(index)

    async def set_serving(self, is_serving: bool) -> None:
        """Each worker answers health itself, as the engine last told it, and NOT_SERVING once asked to stop."""
        self.is_serving = is_serving
        for connection in self.connections.values():
            connection.send_health(is_serving)

    def reload_tokens(self) -> None:
        """SIGHUP: each worker re-reads the token file itself."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """A second shutdown signal: every worker ends now, its calls with it."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()

    async def stop(self, grace_s: float) -> None:
        """Asks every worker to drain and exit (they keep forwarding meanwhile), then closes the socket."""
        self.is_stopping = True
        if self._watch is not None:
            self._watch.cancel()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline_s = time.monotonic() + grace_s + 5.0
        for index, process in self.processes.items():
            while process.poll() is None and time.monotonic() < deadline_s:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                logger.warning("front-end worker %d did not exit in time; killing it", index)
                process.kill()
                process.wait()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
