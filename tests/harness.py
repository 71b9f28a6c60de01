"""Starts a real `infergate serve` process for tests and reads its address from the log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

READY_LINE = re.compile(r"gRPC on (\S+?)(?:;|$)")
METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")
START_TIMEOUT_S = 60.0
# Extra `infergate serve` flags for every server the tests start, e.g. "--transport grpcio" or
# "--workers 2": .ci/run reruns tests/server under each, so every transport passes the same tests.
EXTRA_SERVE_ARGS = tuple(os.environ.get("INFERGATE_TEST_SERVE_ARGS", "").split())


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ServerProcess:
    """A running `infergate serve`: its address, and its log so far."""

    process: subprocess.Popen[str]
    address: str
    metrics_address: str | None
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout_s)
        if self.reader is not None:
            self.reader.join(timeout_s)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


def start_server(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Starts `python -m infergate.server serve ARGS` and waits for its ready line."""
    # The test repository holds two models broken on purpose: under --strict-readiness (Triton's default)
    # a server over it is never ready, so these servers run without it unless a test asks (later flags win).
    command = [sys.executable, "-m", "infergate.server", "serve", "--grpc-address", "127.0.0.1:0",
               "--metrics-address", "127.0.0.1:0", "--strict-readiness", "false", *EXTRA_SERVE_ARGS, *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, **(env or {})})
    log: list[str] = []
    ready = threading.Event()
    found: dict[str, str] = {}

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if not ready.is_set() and (m := READY_LINE.search(line)):
                found["address"] = m.group(1)
                if mm := METRICS_LINE.search(line):
                    found["metrics"] = mm.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server did not start:\n" + "".join(log))
    if "address" not in found:
        process.wait(5)
        reader.join(5)
        assert process.stderr is not None
        process.stderr.close()
        raise RuntimeError(f"server exited with {process.returncode}:\n" + "".join(log))
    return ServerProcess(process, found["address"], found.get("metrics"), log, reader)
