"""One phase of a stress run against a started server: capacity (closed loop) or a fixed rate (open loop), with the
server's statistics before and after, every outcome accounted for."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from infergate.bench.loadgen.stats import poisson_schedule
from infergate.bench.stress_accounting import (
    Accounting,
    account,
    accounting_problems,
    lag_p99_ms,
    statistics_delta,
    statistics_problems,
    summary,
)
from infergate.bench.stress_client import OK, Outcome, PhaseSpec, request_id, run_phase
from infergate.bench.stress_model import MODEL, N_OUT, inputs, reference
from infergate.bench.stress_server import Statistics

logger = logging.getLogger(__name__)

START_SLACK_S = 0.5  # from planning a phase to its first send (client processes connect meanwhile)
SPAWN_SLACK_S = 3.0  # ... when client processes must be spawned first
SETTLE_PERIOD_S = 0.2  # statistics are read again this often until two reads agree
SETTLE_TIMEOUT_S = 10.0  # ... for at most this long
CAPACITY_POOL = 64  # distinct rows the closed loop cycles through
CAPACITY_WARMUP_S = 1.0  # closed loop: completions in this first second are not counted


class Target(Protocol):
    """A started server: a stress_server.Server, or a test harness's process with this much added."""

    @property
    def address(self) -> str: ...

    def statistics(self, model: str) -> Statistics: ...


@dataclass
class PhaseResult:
    """A phase's plan, its outcomes judged, and what the server's counters say."""

    name: str
    mode: str  # "closed" or "open"
    load: float  # closed: clients; open: offered requests/s
    duration_s: float
    accounting: Accounting
    outcomes: list[Outcome]
    throughput_per_s: float  # correct answers a second (closed loop: after the warm-up)
    lag_p99_ms: float | None
    stats_delta: dict[str, int | None] | None = None
    problems: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"phase": self.name, "mode": self.mode, "load": self.load, "duration_s": self.duration_s,
                "throughput_per_s": self.throughput_per_s, "send_lag_p99_ms": self.lag_p99_ms,
                **summary(self.accounting), "server_statistics_delta": self.stats_delta, "problems": self.problems}


def settled_statistics(server: Target, model: str = MODEL) -> Statistics:
    """ModelStatistics once it stops moving: a batch whose client gave up may still be finishing."""
    last = server.statistics(model)
    deadline_s = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline_s:
        time.sleep(SETTLE_PERIOD_S)
        now = server.statistics(model)
        if now == last:
            return now
        last = now
    logger.warning("model '%s' statistics still moving after %g s", model, SETTLE_TIMEOUT_S)
    return last


def expected_outputs(rows: np.ndarray, outcomes: Iterable[Outcome]) -> np.ndarray:
    """The reference output of every row an answer came back for; NaN (never a match) for the others."""
    expected = np.full((len(rows), N_OUT), np.nan, np.float32)
    answered = sorted({o.row for o in outcomes if o.code == OK})
    if answered:
        expected[answered] = reference(rows[answered])
    return expected


def judge(name: str, mode: str, load: float, duration_s: float, rows: np.ndarray, outcomes: list[Outcome],
          expected_ids: Iterable[str], allowed: Sequence[str], throughput_per_s: float,
          before: Statistics | None, after: Statistics | None) -> PhaseResult:
    """Every outcome classified, the failures that must be zero, and the statistics check when both are given."""
    accounting = account(outcomes, expected_ids, expected_outputs(rows, outcomes), allowed)
    result = PhaseResult(name, mode, load, duration_s, accounting, outcomes, throughput_per_s, lag_p99_ms(outcomes))
    result.problems = accounting_problems(name, accounting)
    if before is not None and after is not None:
        result.stats_delta = statistics_delta(before, after)
        result.problems += [f"{name}: {p}" for p in statistics_problems(result.stats_delta, accounting)]
    return result


def capacity(server: Target, concurrency: int, duration_s: float, deadline_s: float, seed: int,
             allowed: Sequence[str], processes: int = 1, channels: int = 2) -> PhaseResult:
    """Closed-loop saturation: `concurrency` clients for `duration_s`; throughput counts correct answers that
    completed after CAPACITY_WARMUP_S, per second of the rest."""
    rows = inputs(CAPACITY_POOL, seed)
    slack_s = SPAWN_SLACK_S if processes > 1 else START_SLACK_S
    spec = PhaseSpec("capacity", server.address, rows, time.monotonic_ns() + int(slack_s * 1e9), deadline_s,
                     concurrency=concurrency, duration_s=duration_s, channels=channels)
    before = settled_statistics(server)
    outcomes = run_phase(spec, processes)
    after = settled_statistics(server)
    counted_from_ns = spec.start_ns + int(CAPACITY_WARMUP_S * 1e9)
    end_ns = spec.start_ns + int(duration_s * 1e9)
    done = sum(1 for o in outcomes if o.code == OK and counted_from_ns <= o.done_ns <= end_ns)
    throughput = round(done / max(duration_s - CAPACITY_WARMUP_S, 1e-3), 2)
    ids = {o.request_id for o in outcomes}  # a closed loop's ids are whatever its clients had time to send
    return judge("capacity", "closed", concurrency, duration_s, rows, outcomes, ids, allowed, throughput, before,
                 after)


def open_rate(server: Target, name: str, rate_per_s: float, duration_s: float, deadline_s: float, seed: int,
              allowed: Sequence[str], processes: int = 1, channels: int = 2,
              action: tuple[float, Callable[[], None]] | None = None, with_statistics: bool = True) -> PhaseResult:
    """Open-loop Poisson arrivals at `rate_per_s` for `duration_s`, each request its own row and id.

    `action` (seconds after the first send, fn) runs mid-load, e.g. a SIGTERM; then no statistics are read after."""
    count = max(1, int(round(rate_per_s * duration_s)))
    rows = inputs(count, seed)
    offsets = poisson_schedule(count, duration_s, np.random.default_rng([seed, 1]))
    slack_s = SPAWN_SLACK_S if processes > 1 else START_SLACK_S
    start_ns = time.monotonic_ns() + int(slack_s * 1e9)
    spec = PhaseSpec(name, server.address, rows, start_ns, deadline_s, offsets_ns=offsets, channels=channels)
    before = settled_statistics(server) if with_statistics else None
    at = (start_ns + int(action[0] * 1e9), action[1]) if action is not None else None
    outcomes = run_phase(spec, processes, at)
    after = settled_statistics(server) if with_statistics else None
    result = judge(name, "open", rate_per_s, duration_s, rows, outcomes, (request_id(name, k) for k in range(count)),
                   allowed, 0.0, before, after)
    result.throughput_per_s = round(result.accounting.correct / duration_s, 2)
    return result
