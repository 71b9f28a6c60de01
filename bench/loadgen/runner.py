"""Runs one load point across client processes and merges what they saw into a Point."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergate.bench.loadgen import stats
from infergate.bench.loadgen.errors import BenchError
from infergate.bench.loadgen.points import Point, client_verdict
from infergate.bench.loadgen.worker import WorkerResult, WorkerSpec, init_worker, run_worker

logger = logging.getLogger(__name__)

START_SLACK_S = 1.0  # from handing specs to the processes to the first send: they connect meanwhile
MAX_RATE_PER_PROCESS = 20000.0  # requests/s one Python client process cannot exceed in any case: refused up front

CpuProbe = Callable[[], float]  # cumulative CPU seconds of something (a server's process tree)


@dataclass(frozen=True)
class Workload:
    """What is sent, to where, and how the client is shaped; the same for every point of a run."""

    target: str  # gRPC address
    label: str  # name in results
    model: str
    requests: tuple[bytes, ...]
    expected: tuple[dict[str, np.ndarray], ...] | None
    processes: int = 1
    channels: int | None = None  # per process; None: channels_for() the point's load
    warmup_s: float = 2.0
    window_s: float = 10.0  # the measurement window (with a request count: the most it may take)
    timeout_s: float = 10.0  # per-request deadline
    check_every: int = 50  # check one response in N against the expected outputs; 0: none
    seed: int = 0


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _quiet() -> bool:
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def _warm(_: int) -> int:
    time.sleep(0.3)  # each process takes one of these, so every one has imported grpc before the first point
    return os.getpid()


class LoadRunner:
    """A pool of client processes, kept for the whole run (a sweep's points reuse it)."""

    def __init__(self, processes: int, show_progress: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
        self.processes = processes
        self.counters: Any = ctx.RawArray("q", processes)
        self.pool = ctx.Pool(processes, initializer=init_worker, initargs=(self.counters,))
        self.show_progress = show_progress and not _quiet()
        self.pool.map(_warm, range(processes), chunksize=1)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.pool.terminate()
        self.close()

    def _specs(self, w: Workload, mode: str, load: float, request_count: int | None) -> tuple[list[WorkerSpec], float]:
        from infergate.bench.loadgen.session import channels_for

        start_ns = time.monotonic_ns() + int(START_SLACK_S * 1e9)
        specs: list[WorkerSpec] = []
        window_s = w.window_s
        if mode == "closed":
            shares = [s for s in stats.split_evenly(int(load), self.processes) if s > 0]
            counts = stats.split_evenly(request_count, len(shares)) if request_count is not None else None
            for k, share in enumerate(shares):
                specs.append(WorkerSpec(k, w.target, w.requests, w.expected, mode, share, None,
                                        counts[k] if counts else None, w.channels or channels_for(mode, share),
                                        start_ns, w.warmup_s, window_s, w.timeout_s, w.check_every))
            return specs, window_s
        if load / self.processes > MAX_RATE_PER_PROCESS:
            raise BenchError(f"--rate {load:g}/s is beyond what {self.processes} client process(es) can generate "
                             f"(at most ~{MAX_RATE_PER_PROCESS:g}/s each): add --processes")
        if request_count is not None:
            window_s = request_count / load
        total = request_count if request_count is not None else int(round(load * window_s))
        for k, count in enumerate(stats.split_evenly(total, self.processes)):
            rng = np.random.default_rng([w.seed, k])
            warm = stats.poisson_schedule(int(round(load / self.processes * w.warmup_s)), w.warmup_s, rng)
            window = stats.poisson_schedule(count, window_s, rng) + int(w.warmup_s * 1e9)
            specs.append(WorkerSpec(k, w.target, w.requests, w.expected, mode, 0, np.concatenate([warm, window]),
                                    None, w.channels or channels_for(mode, load / self.processes), start_ns,
                                    w.warmup_s, window_s, w.timeout_s, w.check_every))
        return specs, window_s

    def run_point(self, w: Workload, mode: str, load: float, request_count: int | None = None,
                  server_cpu: CpuProbe | None = None, idle_cpu: dict[str, CpuProbe] | None = None) -> Point:
        """One point: concurrency `load` (closed) or rate `load`/s (open), over the window or `request_count`."""
        specs, window_s = self._specs(w, mode, load, request_count)
        for k in range(self.processes):
            self.counters[k] = 0
        pending = self.pool.map_async(run_worker, specs, chunksize=1)
        w0 = specs[0].start_ns + int(w.warmup_s * 1e9)
        label = f"{w.label} {w.model} " + (f"c={int(load)}" if mode == "closed" else f"{load:g}/s")
        probes = {"server": server_cpu, **{f"idle:{k}": v for k, v in (idle_cpu or {}).items()}}
        samples: dict[str, float] = {}
        sampled_at = 0.0
        busy0: tuple[float, float] | None = None
        with _Progress(label, w.warmup_s + window_s, self.show_progress) as progress:
            while not pending.ready():
                pending.wait(0.2)
                now = time.monotonic_ns()
                if busy0 is None and now >= w0:
                    busy0, sampled_at = _machine_busy(), time.monotonic()
                    samples = {k: p() for k, p in probes.items() if p is not None}
                progress.update((now - specs[0].start_ns) / 1e9, sum(self.counters[:]))
        results: list[WorkerResult] = pending.get()
        busy1 = _machine_busy()
        after = {k: p() for k, p in probes.items() if p is not None}
        elapsed_s = max(time.monotonic() - sampled_at, 1e-3)  # the servers' CPU: from the window's start to now
        if fatal := next((r.fatal for r in results if r.fatal), None):
            raise BenchError(fatal)
        point = merge(w, mode, load, specs, results, window_s)
        if busy0 is not None and busy1[1] > busy0[1]:
            point.machine_cpu_pct = round(100 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 1)
        if "server" in samples:
            point.server_cpu_pct = round(100 * (after["server"] - samples["server"]) / elapsed_s, 1)
        point.idle_servers_cpu_pct = {k[5:]: round(100 * (after[k] - v) / elapsed_s, 1)
                                      for k, v in samples.items() if k.startswith("idle:")}
        warnings, point.client_limited = client_verdict(point, os.cpu_count() or 1)
        point.warnings += warnings
        for warning in point.warnings:
            logger.warning("%s: %s", label, warning)
        return point


def merge(w: Workload, mode: str, load: float, specs: Sequence[WorkerSpec], results: Sequence[WorkerResult],
          window_s: float) -> Point:
    """The processes' observations as one Point (pure: no clocks read)."""
    w0 = specs[0].start_ns + int(w.warmup_s * 1e9)
    end = max(r.window_end_ns for r in results)
    actual_s = max((end - w0) / 1e9, 1e-9) if end > w0 else window_s
    latencies = np.concatenate([r.latencies_ns for r in results]) if results else np.empty(0, np.int64)
    done = np.concatenate([r.done_ns for r in results])
    sends = np.concatenate([r.send_ns for r in results])
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    point = Point(target=w.label, model=w.model, mode=mode, concurrency=int(load) if mode == "closed" else None,
                  rate_per_s=load if mode == "open" else None, window_s=round(actual_s, 3),
                  ok=sum(r.ok for r in results), errors=dict(sorted(errors.items())),
                  processes=len(results), channels=specs[0].channels, checked=sum(r.checked for r in results))
    point.throughput_per_s = round(float(np.count_nonzero((done >= w0) & (done <= end))) / actual_s, 2)
    point.sent_per_s = round(float(np.count_nonzero((sends >= w0) & (sends < end))) / actual_s, 2)
    point.mean_ms = round(float(latencies.mean()) / 1e6, 4) if latencies.size else None
    point.latency_ms = stats.percentiles_ms(latencies)
    point.cdf_ms = stats.cdf_points_ms(latencies)
    if mode == "open":
        point.send_lag_ms = stats.lag_summary_ms(np.concatenate([r.lags_ns for r in results]))
    cpu = [r.cpu_s / r.cpu_wall_s if r.cpu_wall_s > 0 else 0.0 for r in results]
    point.client_cpu_pct = round(100 * sum(cpu), 1)
    point.client_max_process_cpu_pct = round(100 * max(cpu, default=0.0), 1)
    if wrong := next((r.first_wrong for r in results if r.first_wrong), None):
        point.warnings.append(f"wrong answer under load: {wrong}")
    return point


class _Progress:
    """A rich progress bar over a point's warm-up and window; nothing when quiet (CI, not a terminal)."""

    def __init__(self, label: str, total_s: float, enabled: bool) -> None:
        self.label, self.total_s, self.enabled = label, total_s, enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[answers]} answers"), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total_s, answers=0)
        return self

    def update(self, elapsed_s: float, answers: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=min(max(elapsed_s, 0.0), self.total_s), answers=answers)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
