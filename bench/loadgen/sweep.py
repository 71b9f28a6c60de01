"""The step sweep as a pure function: which load to try next, given what held the SLO so far."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepPlan:
    """How a sweep steps: an explicit list, or geometric growth; then bisection between the last good and first bad."""

    steps: tuple[float, ...] = ()  # explicit loads in order; empty: start, start x factor, ...
    start: float = 1.0
    factor: float = 2.0  # geometric growth when no explicit steps
    max_steps: int = 12  # points at most, refinement included
    refine: int = 0  # bisection points after the SLO first breaks
    integer: bool = False  # concurrency sweeps step in whole numbers


def next_load(plan: SweepPlan, history: Sequence[tuple[float, bool]]) -> float | None:
    """The next load to measure, or None when the sweep is done. history: (load, held the SLO) in run order."""
    if not history:
        return plan.steps[0] if plan.steps else plan.start
    if len(history) >= plan.max_steps:
        return None
    failed = [load for load, held in history if not held]
    if not failed:
        if plan.steps:
            return plan.steps[len(history)] if len(history) < len(plan.steps) else None
        grown = history[-1][0] * plan.factor
        return float(max(round(grown), int(history[-1][0]) + 1)) if plan.integer else grown
    first_fail = next(i for i, (_, held) in enumerate(history) if not held)
    if len(history) - 1 - first_fail >= plan.refine:
        return None
    bad = min(failed)
    good = [load for load, held in history if held and load < bad]
    if not good:
        return None
    low = max(good)
    middle = float(int((low + bad) / 2)) if plan.integer else (low + bad) / 2
    if middle <= low or middle >= bad:
        return None
    return middle
