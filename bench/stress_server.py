"""A real `infergate serve` for the stress and soak runs: start, statistics, /proc and /metrics samples, stop."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from infergate.bench.perf_compare import _process_tree, git_commit
from infergate.proto import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

READY_LINE = re.compile(r"gRPC on (\S+?)(?:;|$)")
METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")
START_TIMEOUT_S = 60.0  # from spawn to the ready line
STOP_TIMEOUT_S = 30.0  # from SIGTERM to exit before the server is killed
RPC_TIMEOUT_S = 10.0  # statistics calls
SCRAPE_TIMEOUT_S = 5.0  # one /metrics request
UNANSWERED_ROWS = "infergate_computed_unanswered_rows_total"  # a counter (the exposition adds _total), where exported
STATISTICS_METHOD = "/inference.GRPCInferenceService/ModelStatistics"


@dataclass(frozen=True)
class Statistics:
    """One model's counters from ModelStatistics: what the server computed and answered."""

    inference_count: int  # rows computed
    execution_count: int  # batches run
    success_count: int  # requests answered OK
    fail_count: int  # requests answered with an error
    queue_count: int  # requests that left the queue for a batch
    # From /metrics, when the server exports it: rows computed for requests already cancelled or expired when
    # their outputs came. An execution none of whose requests was answered shows only here, not in
    # inference_count, so the check that only answered requests were computed needs both.
    computed_unanswered_rows: int | None = None


@dataclass
class Server:
    """A running server: its process, addresses and log file."""

    process: subprocess.Popen[bytes]
    address: str
    metrics_address: str | None
    log_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def statistics(self, model: str) -> Statistics:
        return statistics(self.address, model, self.metrics_address)

    def scrape(self, names: tuple[str, ...]) -> dict[str, float | None]:
        """These metrics from /metrics (each summed over its label sets); None for one the server does not export."""
        if self.metrics_address is None:
            return {name: None for name in names}
        url = f"http://{self.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return gauges(response.read().decode("utf-8", "replace"), names)

    def tree(self) -> list[int]:
        """The server's pid and its children's (the --workers front ends)."""
        return sorted(_process_tree(self.pid))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL to the tree if it has not exited in `timeout_s`; returns the exit status."""
        tree = self.tree()
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("server pid %d did not exit %g s after SIGTERM: killing pids %s", self.pid, timeout_s, tree)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return self.process.wait(timeout_s)


def statistics(address: str, model: str, metrics_address: str | None = None) -> Statistics:
    """One model's ModelStatistics counters, over a fresh connection; with a metrics address, also its
    infergate_computed_unanswered_rows."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(STATISTICS_METHOD, request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                                   response_deserializer=pb.ModelStatisticsResponse.FromString)
        stats = call(pb.ModelStatisticsRequest(name=model), timeout=RPC_TIMEOUT_S).model_stats[0]
    infer = stats.inference_stats
    unanswered = None
    if metrics_address is not None:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode("utf-8", "replace")
        model_lines = "\n".join(line for line in text.splitlines() if f'model="{model}"' in line)
        value = gauges(model_lines, (UNANSWERED_ROWS,))[UNANSWERED_ROWS]
        unanswered = int(value) if value is not None else None
    return Statistics(int(stats.inference_count), int(stats.execution_count), int(infer.success.count),
                      int(infer.fail.count), int(infer.queue.count), unanswered)


def gauges(text: str, names: tuple[str, ...]) -> dict[str, float | None]:
    """Sums of each named metric's samples in a Prometheus text exposition; None where it has none."""
    found: dict[str, float | None] = {name: None for name in names}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in found:
            with contextlib.suppress(ValueError, IndexError):
                found[name] = (found[name] or 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def start(repository: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    """Starts `python -m infergate.server serve` on free loopback ports and waits for its ready line."""
    command = [sys.executable, "-m", "infergate.server", "serve", "--model-repository", str(repository),
               "--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", *extra]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C at the terminal reaches the kit, which stops the server itself.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline_s:
        text = log_path.read_text(errors="replace")
        if ready := READY_LINE.search(text):
            metrics = METRICS_LINE.search(text)
            return Server(process, ready.group(1), metrics.group(1) if metrics else None, log_path, command)
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready:\n{text[-3000:]}")
        time.sleep(0.1)
    process.kill()
    process.wait(STOP_TIMEOUT_S)
    text = log_path.read_text(errors="replace")
    raise RuntimeError(f"server not ready within {START_TIMEOUT_S:g} s:\n{text[-3000:]}")


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process, from /proc/<pid>/status; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    """Entries of /proc/<pid>/fd; None once the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def host() -> dict[str, Any]:
    """How busy the host is (load averages, runnable/total tasks), its CPUs, and the commit under test."""
    return {"loadavg": loadavg(), "cpus": os.cpu_count(), "commit": git_commit()}


def serve_and_run(module: str, argv: Sequence[str], log_path: Path, build: Callable[[Path], Path],
                  flags: Sequence[str], run: Callable[[Server], dict[str, Any]]) -> dict[str, Any]:
    """Builds a repository in a scratch folder (`build(folder)` returns it), serves it with `flags`, runs, and
    stops the server whatever happens; returns run's report with how it was made: both commands, the host's
    load before and after, the exit status at the stop."""
    before = host()
    with tempfile.TemporaryDirectory(prefix="infergate-stress-") as work:
        server = start(build(Path(work)), log_path, *flags)
        try:
            report = run(server)
        finally:
            code = server.stop()
    report.update({"command": shlex.join([sys.executable, "-m", module, *argv]),
                   "server_command": shlex.join(server.command).replace(work, "$WORK"),
                   "host_before": before, "host_after": host(), "server_exit_status_at_stop": code})
    return report
