"""A run's plan of points (fixed loads or an SLO sweep) against one or several targets, interleaved."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infergate.bench.loadgen import workload as wl
from infergate.bench.loadgen.errors import BenchError
from infergate.bench.loadgen.points import Point, goodput, meets_slo
from infergate.bench.loadgen.runner import CpuProbe, LoadRunner, Workload
from infergate.bench.loadgen.sweep import SweepPlan, next_load

logger = logging.getLogger(__name__)

CONNECTIONS_PER_CLIENTS = 6  # closed loop: a channel (TCP connection) per this many clients, as perf_analyzer
RATE_PER_CHANNEL = 1000.0  # open loop: one channel per this many requests/s
MAX_CHANNELS = 8  # per process


@dataclass(frozen=True)
class DataOptions:
    """Where request data comes from and how requests are shaped."""

    batch_size: int = 1
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    data: Path | None = None  # .npz of requests (and expected outputs)
    record: Path | None = None  # write the requests and reference outputs here
    distinct: int = 16  # distinct random requests, sent in turn
    seed: int = 0
    check_every: int = 50


@dataclass(frozen=True)
class LoadPlan:
    """Which points to measure: fixed concurrencies and rates, then optionally a sweep until the SLO breaks."""

    concurrency: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    sweep_mode: str | None = None  # "closed" or "open"
    sweep: SweepPlan = SweepPlan()
    slo_p99_ms: float = 100.0
    max_error_rate: float = 0.001
    request_count: int | None = None  # measured requests per point instead of the window


@dataclass
class Target:
    """One server under test, with its workload and (when started by the harness) its CPU probes."""

    label: str
    address: str
    info: wl.ModelInfo
    workload: Workload
    server_cpu: CpuProbe | None = None
    data_source: str = "random"
    expected_source: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)  # more to record, e.g. the command that started it

    def describe(self) -> dict[str, Any]:
        return {"address": self.address, "server": self.info.server, "model_platform": self.info.platform,
                "inputs": [[t.name, t.datatype, list(t.shape)] for t in self.info.inputs],
                "data": self.data_source, "expected_outputs": self.expected_source, **self.extra}


def channels_for(mode: str, load_per_process: float) -> int:
    """Channels (TCP connections) a client process opens for its share of a point's load."""
    per_channel = CONNECTIONS_PER_CLIENTS if mode == "closed" else RATE_PER_CHANNEL
    return max(1, min(MAX_CHANNELS, math.ceil(load_per_process / per_channel)))


def prepare_target(label: str, address: str, model: str, version: str, data: DataOptions,
                   shape_of: Callable[..., Workload]) -> Target:
    """Metadata, request bytes and expected outputs for one target; `shape_of(requests=, expected=)` makes the
    Workload."""
    info = wl.fetch_model(address, model, version)
    shapes = wl.resolve_shapes(info, data.batch_size, data.shapes)
    expected: list[dict[str, Any]] | None = None
    if data.data is not None:
        inputs, expected = wl.load_data(data.data, info, shapes)
        source = f"file {data.data}"
    else:
        inputs = wl.random_inputs(info, shapes, data.distinct, data.seed)
        source = f"random (seed {data.seed}, {data.distinct} distinct requests)"
    requests = tuple(wl.encode_request(info, x) for x in inputs)
    expected_source = "from the data file" if expected is not None else "none"
    if expected is None and (data.check_every or data.record):
        expected = wl.reference_outputs(address, requests)
        expected_source = "each request answered alone before the load (reference)"
    if data.record is not None and expected is not None:
        wl.save_recording(data.record, inputs, expected)
        logger.info("recorded %d requests and their outputs in %s", len(inputs), data.record)
    workload = shape_of(requests=requests, expected=tuple(expected) if expected and data.check_every else None)
    return Target(label, address, info, workload, data_source=source,
                  expected_source=expected_source if data.check_every else "not checked")


def _measure(runner: LoadRunner, target: Target, mode: str, load: float, plan: LoadPlan,
             idle: dict[str, CpuProbe]) -> Point:
    point = runner.run_point(target.workload, mode, load, plan.request_count, target.server_cpu, idle)
    logger.info("%s %s %s: %.0f infer/s, P50 %s ms, P99 %s ms, errors %s, client CPU %.0f%%", target.label,
                point.model, point.load_label, point.throughput_per_s, point.latency_ms.get("p50"),
                point.latency_ms.get("p99"), point.errors or 0, point.client_cpu_pct)
    return point


def _idle_probes(targets: Sequence[Target], current: Target) -> dict[str, CpuProbe]:
    return {t.label: t.server_cpu for t in targets if t is not current and t.server_cpu is not None}


def run_plan(runner: LoadRunner, targets: Sequence[Target], plan: LoadPlan
             ) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """Every fixed point, then the sweep; each point runs against every target in turn, the order rotating from
    point to point so that drift on a noisy machine falls on all targets alike. Returns points and goodput."""
    points: list[Point] = []
    fixed = [("closed", float(c)) for c in plan.concurrency] + [("open", float(r)) for r in plan.rates]
    for step, (mode, load) in enumerate(fixed):
        for k in range(len(targets)):
            target = targets[(step + k) % len(targets)]
            points.append(_measure(runner, target, mode, load, plan, _idle_probes(targets, target)))
    results: dict[str, dict[str, Any]] = {}
    if plan.sweep_mode is None:
        return points, results
    history: dict[str, list[tuple[float, bool]]] = {t.label: [] for t in targets}
    swept: dict[str, list[Point]] = {t.label: [] for t in targets}
    step = 0
    while True:
        todo = [(t, step_load) for t in targets
                if (step_load := next_load(plan.sweep, history[t.label])) is not None]
        if not todo:
            break
        for k in range(len(todo)):
            target, step_load = todo[(step + k) % len(todo)]
            point = _measure(runner, target, plan.sweep_mode, step_load, plan, _idle_probes(targets, target))
            point.slo_ok = meets_slo(point, plan.slo_p99_ms, plan.max_error_rate)
            history[target.label].append((step_load, point.slo_ok))
            swept[target.label].append(point)
            points.append(point)
            if point.client_limited:  # the rest of this target's sweep would measure the client, not the server
                history[target.label].extend([(step_load, False)] * plan.sweep.max_steps)
                logger.error("%s: the sweep stops at %s: the client, not the server, is the limit", target.label,
                             point.load_label)
        step += 1
    for target in targets:
        best = goodput(swept[target.label])
        results[target.label] = {
            "target": target.label, "model": target.workload.model, "mode": plan.sweep_mode,
            "slo_p99_ms": plan.slo_p99_ms, "max_error_rate": plan.max_error_rate,
            "throughput_per_s": best.throughput_per_s if best else None,
            "load": best.load_label if best else None,
            "client_limited": any(p.client_limited for p in swept[target.label]),
        }
    return points, results


def check_plan(plan: LoadPlan) -> None:
    if not plan.concurrency and not plan.rates and plan.sweep_mode is None:
        raise BenchError("nothing to measure: give --concurrency, --rate or --sweep")
    if any(c < 1 for c in plan.concurrency):
        raise BenchError(f"--concurrency {list(plan.concurrency)}: each must be at least 1")
    if any(r <= 0 for r in plan.rates):
        raise BenchError(f"--rate {list(plan.rates)}: each must be above 0")
    if plan.sweep_mode is not None and (plan.sweep.start <= 0 or plan.sweep.factor <= 1) and not plan.sweep.steps:
        raise BenchError("--sweep-start must be above 0 and --sweep-factor above 1")
    least = 1 if plan.sweep_mode == "closed" else 0  # concurrencies are whole clients; rates any positive
    if plan.sweep_mode is not None and any(step <= 0 or step < least for step in plan.sweep.steps):
        raise BenchError(f"--sweep-steps {list(plan.sweep.steps)}: each must be "
                         f"{'at least 1 (clients)' if least else 'above 0 (requests/s)'}")
