"""Pure judgement of a phase's outcomes: one class per request id, what is lost, repeated or mixed up, and whether
the server's own statistics show that only the answered requests were computed."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from infergate.bench.loadgen.stats import percentiles_ms
from infergate.bench.stress_client import LOST, OK, Outcome
from infergate.bench.stress_model import matches
from infergate.bench.stress_server import Statistics

logger = logging.getLogger(__name__)

CORRECT = "correct"  # answered, with the request's own id and the reference's output
MIXED_UP = "mixed_up"  # answered, but with another id or a wrong (or missing) output
OTHER = "other"  # any status but the refusals a phase expects
# The statuses a refused or expired request may get: each is its own class.
STATUS_CLASSES = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE")
CLASSES = (CORRECT, *STATUS_CLASSES, OTHER, MIXED_UP, LOST)
DETAIL_CHARS = 160  # a status message as grouped in the report, digits folded to N
GRPC_CLIENT_DEADLINE = "Deadline Exceeded"  # the message of a deadline the client's own timer ended


def classify(outcome: Outcome, expected: np.ndarray, allowed: Iterable[str]) -> str:
    """The one class of a request: CORRECT, a status class it is `allowed`, OTHER, MIXED_UP or LOST.

    `expected` holds the reference output of each of the phase's rows."""
    if outcome.code == OK:
        right = (outcome.response_id == outcome.request_id and outcome.output is not None
                 and matches(outcome.output, expected[outcome.row]))
        return CORRECT if right else MIXED_UP
    if outcome.code == LOST:
        return LOST
    return outcome.code if outcome.code in allowed and outcome.code in STATUS_CLASSES else OTHER


def fold_detail(code: str, detail: str) -> str:
    """A status message with its numbers folded, so the report groups one kind of refusal as one line."""
    return f"{code}: {re.sub(r'[0-9]+(?:[.][0-9]+)?', 'N', detail)[:DETAIL_CHARS]}"


@dataclass
class Accounting:
    """Every request of a phase: its class, and the failures that must be zero."""

    sent: int  # distinct request ids the phase sent
    counts: dict[str, int]  # class -> requests
    lost: int  # ids with no outcome, or LOST
    duplicated: int  # ids with more than one outcome, or whose id came back on more than one answer
    mixed_up: int  # answers with another request's id or a wrong output
    other: int  # statuses the phase does not expect
    details: dict[str, int] = field(default_factory=dict)  # folded status message -> requests
    latencies_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # correct ones, from due time

    @property
    def correct(self) -> int:
        return self.counts.get(CORRECT, 0)

    @property
    def failures(self) -> int:
        return self.lost + self.duplicated + self.mixed_up + self.other


def account(outcomes: Sequence[Outcome], expected_ids: Iterable[str], expected: np.ndarray,
            allowed: Iterable[str]) -> Accounting:
    """Classifies every outcome and checks that each expected id has exactly one, and each answer its own id."""
    allowed = tuple(allowed)
    per_id = Counter(o.request_id for o in outcomes)
    wanted = set(expected_ids)
    answered_ids = Counter(o.response_id for o in outcomes if o.code == OK and o.response_id is not None)
    classes = [classify(o, expected, allowed) for o in outcomes]
    counts = Counter(classes)
    missing = len(wanted - set(per_id))
    duplicated = sum(n - 1 for n in per_id.values() if n > 1) + sum(n - 1 for n in answered_ids.values() if n > 1)
    stray = len(set(per_id) - wanted)  # an outcome for an id never sent: a mix-up by definition
    details = Counter(fold_detail(o.code, o.detail) for o, c in zip(outcomes, classes) if c != CORRECT)
    latencies = np.array([o.done_ns - o.scheduled_ns for o, c in zip(outcomes, classes) if c == CORRECT], np.int64)
    return Accounting(len(wanted), {c: counts.get(c, 0) for c in CLASSES}, counts.get(LOST, 0) + missing,
                      duplicated, counts.get(MIXED_UP, 0) + stray, counts.get(OTHER, 0),
                      dict(details.most_common()), latencies)


def statistics_delta(before: Statistics, after: Statistics) -> dict[str, int | None]:
    """after - before of each counter; None for one either side lacks."""
    delta: dict[str, int | None] = {}
    for name in asdict(before):
        low, high = getattr(before, name), getattr(after, name)
        delta[name] = high - low if low is not None and high is not None else None
    return delta


def statistics_problems(delta: dict[str, int | None], accounting: Accounting,
                        rows_per_request: int = 1) -> list[str]:
    """Why the server's counters disagree with the client's: computed rows must be the correct answers' rows, and
    successes the correct answers, or a request that failed (refused, expired) was computed, or one was lost."""
    problems = []
    rows = accounting.correct * rows_per_request
    if delta["inference_count"] != rows:
        problems.append(f"the server computed {delta['inference_count']} rows (inference_count delta) but "
                        f"{rows} rows were answered correctly")
    if delta["success_count"] != accounting.correct:
        problems.append(f"the server counted {delta['success_count']} successes (success.count delta) but the "
                        f"client got {accounting.correct} correct answers")
    if delta.get("computed_unanswered_rows"):
        problems.append(f"the server computed {delta['computed_unanswered_rows']} rows for requests already "
                        "cancelled or expired (infergate_computed_unanswered_rows delta)")
    return problems


def accounting_problems(phase: str, accounting: Accounting) -> list[str]:
    """The failures that must be zero in every phase, as sentences."""
    problems = []
    for name in ("lost", "duplicated", "mixed_up", "other"):
        if value := getattr(accounting, name):
            problems.append(f"{phase}: {value} {name.replace('_', ' ')}")
    return problems


def latency_summary_ms(latencies_ns: np.ndarray) -> dict[str, float | None]:
    summary = percentiles_ms(latencies_ns)
    return {k: summary[k] for k in ("p50", "p95", "p99")}


def lag_p99_ms(outcomes: Sequence[Outcome]) -> float | None:
    """How late the client sent its requests (sent minus due), P99 in ms: above a few ms the client, not the
    server, shaped the load."""
    lags = np.array([o.sent_ns - o.scheduled_ns for o in outcomes], np.int64)
    return round(float(np.percentile(lags, 99)) / 1e6, 3) if lags.size else None


def p99_ratio(loaded: dict[str, float | None], light: dict[str, float | None]) -> float | None:
    """P99 under overload over P99 at light load; None when either is missing."""
    high, low = loaded.get("p99"), light.get("p99")
    return round(high / low, 3) if high is not None and low else None


def summary(accounting: Accounting) -> dict[str, Any]:
    """The JSON form of an accounting (latencies as percentiles)."""
    return {"sent": accounting.sent, "counts": accounting.counts, "lost": accounting.lost,
            "duplicated": accounting.duplicated, "mixed_up": accounting.mixed_up, "other": accounting.other,
            "latency_ms": latency_summary_ms(accounting.latencies_ns), "details": accounting.details}
