"""The soak's samples and its verdict: errors, RSS growth after the warm-up, and fds and event-loop tasks flat.

Pure: the samples in, the figures and the problems out; soak.py takes the samples, soak_report draws them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1  # the first 10 % of the load is warm-up (60 s of the default 600 s): allocators, caches
MAX_RSS_GROWTH_PCT = 5.0  # RSS at the end over RSS just after the warm-up
# fds: every connection of a soak stays open (the client's channels) but the metrics scrape's, which the kit opens
# after reading /proc; one still closing at the instant of a read shows as one fd more, never two.
FD_SLACK = 1
# Tasks beyond the calls in flight: the two gauges come from one scrape but are read a moment apart while the loop
# runs on, so a call that starts or ends in between counts in one and not the other; at ~60 calls/s two in that
# instant is already rare. A leak grows without bound, past any such slack in a few windows.
TASK_SLACK = 2
LOAD, IDLE_BEFORE, IDLE_AFTER = "load", "idle-before", "idle-after"


@dataclass
class Sample:
    """One look at the server and at the client's window since the last look."""

    t_s: float  # since the load started (negative: before it)
    phase: str  # LOAD, IDLE_BEFORE or IDLE_AFTER
    rss_bytes: int | None  # VmRSS summed over the server's processes
    rss_main_bytes: int | None  # ... of the process that holds the models
    fds: int | None  # /proc/<pid>/fd entries, summed likewise
    processes: int
    tasks: float | None  # infergate_event_loop_tasks; None when the server does not export it
    in_flight: float | None  # infergate_in_flight_requests, from the same scrape
    metrics_rss_bytes: float | None  # prometheus_client's process_resident_memory_bytes (the main process)
    metrics_fds: float | None  # ... process_open_fds
    sent: int = 0  # requests sent so far
    answered: int = 0  # outcomes in the window
    correct: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # class -> requests in the window, correct excluded
    p50_ms: float | None = None  # correct answers of the window, from their due time
    p99_ms: float | None = None
    throughput_per_s: float = 0.0  # correct answers a second in the window

    @property
    def tasks_beyond_in_flight(self) -> float | None:
        """Event-loop tasks that are not a call being served: flat unless something leaks."""
        return self.tasks - self.in_flight if self.tasks is not None and self.in_flight is not None else None


def warmup_s(duration_s: float) -> float:
    return WARMUP_FRACTION * duration_s


def baseline(samples: Sequence[Sample], duration_s: float) -> Sample | None:
    """The first load sample after the warm-up."""
    return next((s for s in samples if s.phase == LOAD and s.t_s >= warmup_s(duration_s)), None)


def final(samples: Sequence[Sample]) -> Sample | None:
    """The last sample taken under load."""
    return next((s for s in reversed(samples) if s.phase == LOAD), None)


def _growth(after: float | None, before: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def verdict(samples: Sequence[Sample], duration_s: float, errors: dict[str, int],
            failures: list[str]) -> dict[str, Any]:
    """The soak's figures and problems. `errors`: the whole run's non-correct outcomes by class; `failures`: the
    accounting's and the statistics' problems."""
    problems = list(failures)
    if errors:
        problems.append(f"errors: {errors} (none is expected at this load)")
    first, last = baseline(samples, duration_s), final(samples)
    figures: dict[str, Any] = {"warmup_s": warmup_s(duration_s), "warmup_rule": f"first {WARMUP_FRACTION:.0%} of "
                               "the load", "max_rss_growth_pct": MAX_RSS_GROWTH_PCT, "fd_slack": FD_SLACK,
                               "task_slack": TASK_SLACK}
    if first is None or last is None or first is last:
        problems.append("too few samples after the warm-up to judge growth")
        return {**figures, "passed": False, "problems": problems}
    rss_pct = (100.0 * (last.rss_bytes - first.rss_bytes) / first.rss_bytes
               if last.rss_bytes is not None and first.rss_bytes else None)
    fd_growth = _growth(last.fds, first.fds)
    task_growth = _growth(last.tasks_beyond_in_flight, first.tasks_beyond_in_flight)
    idle = {s.phase: s for s in samples if s.phase in (IDLE_BEFORE, IDLE_AFTER)}
    idle_fd_growth = _growth(idle[IDLE_AFTER].fds, idle[IDLE_BEFORE].fds) if len(idle) == 2 else None
    idle_task_growth = _growth(idle[IDLE_AFTER].tasks, idle[IDLE_BEFORE].tasks) if len(idle) == 2 else None
    figures.update({
        "baseline_t_s": first.t_s, "final_t_s": last.t_s,
        "rss_baseline_bytes": first.rss_bytes, "rss_final_bytes": last.rss_bytes,
        "rss_max_bytes": max((s.rss_bytes for s in samples if s.rss_bytes is not None), default=None),
        "rss_growth_pct": round(rss_pct, 3) if rss_pct is not None else None,
        "fds_baseline": first.fds, "fds_final": last.fds, "fds_growth": fd_growth,
        "fds_idle_before": idle.get(IDLE_BEFORE) and idle[IDLE_BEFORE].fds,
        "fds_idle_after": idle.get(IDLE_AFTER) and idle[IDLE_AFTER].fds, "fds_idle_growth": idle_fd_growth,
        "tasks_beyond_in_flight_baseline": first.tasks_beyond_in_flight,
        "tasks_beyond_in_flight_final": last.tasks_beyond_in_flight, "tasks_growth": task_growth,
        "tasks_idle_before": idle.get(IDLE_BEFORE) and idle[IDLE_BEFORE].tasks,
        "tasks_idle_after": idle.get(IDLE_AFTER) and idle[IDLE_AFTER].tasks, "tasks_idle_growth": idle_task_growth,
        "tasks_gauge": "missing" if all(s.tasks is None for s in samples) else "present",
    })
    if rss_pct is None:
        problems.append("no RSS samples: the server's /proc entries could not be read")
    elif rss_pct >= MAX_RSS_GROWTH_PCT:
        problems.append(f"RSS grew {rss_pct:.1f} % after the warm-up (at most {MAX_RSS_GROWTH_PCT:g} %)")
    for name, growth, slack in (("fds", fd_growth, FD_SLACK), ("fds when idle", idle_fd_growth, FD_SLACK),
                                ("tasks beyond the calls in flight", task_growth, TASK_SLACK),
                                ("tasks when idle", idle_task_growth, TASK_SLACK)):
        if growth is not None and growth > slack:
            problems.append(f"{name} grew by {growth:g} (at most {slack} of noise)")
    if fd_growth is None:
        problems.append("no fd samples: the server's /proc entries could not be read")
    return {**figures, "passed": not problems, "problems": problems}
