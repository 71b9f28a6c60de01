"""One measured load point, and the pure verdicts on it: client saturation, SLO, goodput."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PROCESS_SATURATED_PCT = 85.0  # one client process above this % of a core: its event loop is the limit
RATE_SHORTFALL = 0.95  # open loop: sends below this fraction of the requested rate mean the client fell behind
SEND_LAG_LIMIT_MS = 10.0  # open loop: median send lag behind the schedule above this, ms: the client fell behind
MACHINE_BUSY_PCT = 95.0  # machine-wide CPU busy above this %: client and server compete for the cores
CLIENT_SHARE_WARN = 0.3  # ... and the client used more than this fraction of what was used: say it is a competitor


@dataclass
class Point:
    """One target at one load (a concurrency or a rate), measured over one window."""

    target: str  # a label: the server's name in `compare`, else its address
    model: str
    mode: str  # "closed" (fixed concurrency) or "open" (Poisson arrivals at a fixed rate)
    concurrency: int | None = None  # closed loop: requests in flight
    rate_per_s: float | None = None  # open loop: requested arrival rate
    window_s: float = 0.0  # measurement window, after warm-up
    ok: int = 0  # successful, correct responses to requests sent in the window
    errors: dict[str, int] = field(default_factory=dict)  # gRPC status name (or WRONG_ANSWER) -> count
    throughput_per_s: float = 0.0  # successful responses completed in the window, per second
    sent_per_s: float = 0.0  # requests sent in the window, per second (open loop: the rate actually generated)
    mean_ms: float | None = None
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50 ... p99.9; open loop: from schedule
    cdf_ms: list[list[float]] = field(default_factory=list)  # [[quantile, ms], ...]
    send_lag_ms: dict[str, float | None] = field(default_factory=dict)  # open loop: send time minus scheduled
    checked: int = 0  # responses compared with expected outputs
    processes: int = 1
    channels: int = 1  # per process
    client_cpu_pct: float = 0.0  # all client processes, 100 = one core
    client_max_process_cpu_pct: float = 0.0  # the busiest client process
    machine_cpu_pct: float | None = None  # whole machine busy, 100 = every core
    server_cpu_pct: float | None = None  # the server's process tree, when the harness started it
    idle_servers_cpu_pct: dict[str, float] = field(default_factory=dict)  # compare: the other servers meanwhile
    client_limited: bool = False  # the client, not the server, limited this point: not the server's figure
    warnings: list[str] = field(default_factory=list)
    slo_ok: bool | None = None  # P99 and error rate within the SLO (sweeps only)

    @property
    def load(self) -> float:
        """The swept quantity: concurrency (closed) or requested rate (open)."""
        return float((self.concurrency if self.mode == "closed" else self.rate_per_s) or 0.0)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def load_label(self) -> str:
        return f"c={self.concurrency}" if self.mode == "closed" else f"{self.rate_per_s:g}/s"


def client_verdict(point: Point, cores: int) -> tuple[list[str], bool]:
    """Warnings about the client itself, and whether it (not the server) limited the point."""
    warnings: list[str] = []
    limited = False
    if point.mode == "open" and point.rate_per_s:
        lag_p50, lag_p99 = point.send_lag_ms.get("p50"), point.send_lag_ms.get("p99")
        if point.sent_per_s < RATE_SHORTFALL * point.rate_per_s or (lag_p50 or 0.0) > SEND_LAG_LIMIT_MS:
            limited = True
            warnings.append(f"the client could not generate {point.rate_per_s:g} requests/s: it sent "
                            f"{point.sent_per_s:.1f}/s, the median request {lag_p50 or 0:.1f} ms behind schedule "
                            f"(limits: {100 * RATE_SHORTFALL:g}% of the rate, {SEND_LAG_LIMIT_MS:g} ms), with "
                            f"{point.processes} process(es); these figures are the client's, not the server's")
        elif lag_p99 is not None and lag_p99 > SEND_LAG_LIMIT_MS:
            warnings.append(f"1% of requests left the client over {lag_p99:.1f} ms late (the machine was busy?): "
                            "their latency, counted from the schedule, includes that delay")
    if point.client_max_process_cpu_pct > PROCESS_SATURATED_PCT:
        limited = True
        warnings.append(f"a client process used {point.client_max_process_cpu_pct:.0f}% of a core: the client is "
                        "saturated (add --processes)")
    machine = point.machine_cpu_pct
    if machine is not None and machine > MACHINE_BUSY_PCT:
        share = point.client_cpu_pct / (machine * cores) if machine > 0 else 0.0
        if share > CLIENT_SHARE_WARN:
            warnings.append(f"the machine was {machine:.0f}% busy and the client used {100 * share:.0f}% of that: "
                            "client and server compete for the cores")
    return warnings, limited


def meets_slo(point: Point, slo_p99_ms: float, max_error_rate: float) -> bool:
    """P99 within the SLO and errors (wrong answers included) at most `max_error_rate` of all requests."""
    p99 = point.latency_ms.get("p99")
    total = point.ok + point.error_count
    if p99 is None or total == 0 or point.client_limited:
        return False
    return p99 <= slo_p99_ms and point.error_count / total <= max_error_rate


def goodput(points: Sequence[Point]) -> Point | None:
    """The highest-throughput point that held the SLO (slo_ok set by the sweep), if any."""
    held = [p for p in points if p.slo_ok]
    return max(held, key=lambda p: p.throughput_per_s) if held else None
