"""Overload at 3x the capacity measured here: every request id ends in exactly one outcome, the answers are right,
the admitted P99 stays bounded, and the server's statistics show that no refused or expired request was run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from infergate.bench.stress_accounting import CORRECT, p99_ratio
from infergate.bench.stress_model import build_repository, saturating_clients
from infergate.bench.stress_phases import PhaseResult, capacity, open_rate
from infergate.bench.stress_server import Statistics, statistics

from harness import ServerProcess, start_server

CAPACITY_S = 3.0  # closed loop; its first second is not counted
PHASE_S = 4.0  # each open-loop load
DEADLINE_S = 2.0  # far above the bounded queue's wait (~30 ms), so only a stalled host would expire one
# The bound is 3. P99 at half load measured 40-50 ms and at 3x 65-80 ms here (ratio 1.6-2.0) with a
# queue of one batch: the margin is for a shared host's bad second, the accounting asserts have none.
MAX_P99_RATIO = 3.0
REFUSALS = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")  # what overload may answer: the queue's and the deadline's


@dataclass
class Harnessed:
    """The harness's server, with the statistics the stress phases read."""

    process: ServerProcess

    @property
    def address(self) -> str:
        return self.process.address

    def statistics(self, model: str) -> Statistics:
        return statistics(self.process.address, model, self.process.metrics_address)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harnessed]:
    repository = build_repository(tmp_path_factory.mktemp("overload_repo"))
    process = start_server("--model-repository", str(repository))
    yield Harnessed(process)
    process.stop()


def _assert_accounted(phase: PhaseResult) -> None:
    """Exactly one outcome per id, none lost, repeated or mixed up, and the server computed only the answers."""
    accounting = phase.accounting
    details = list(accounting.details.items())[:5]
    assert (accounting.lost, accounting.duplicated, accounting.mixed_up, accounting.other) == (0, 0, 0, 0), \
        (phase.name, accounting.counts, details)
    assert sum(accounting.counts.values()) == len(phase.outcomes) == accounting.sent, (phase.name, accounting.counts)
    assert phase.stats_delta is not None
    assert phase.stats_delta["inference_count"] == accounting.correct, (phase.name, phase.stats_delta, details)
    assert phase.stats_delta["success_count"] == accounting.correct, (phase.name, phase.stats_delta, details)
    assert not phase.stats_delta["computed_unanswered_rows"], (phase.name, phase.stats_delta)  # 0, or not exported
    assert not phase.problems, phase.problems


def test_three_times_capacity_accounts_for_every_request(server: Harnessed) -> None:
    measured = capacity(server, saturating_clients(), CAPACITY_S, DEADLINE_S, seed=1, allowed=REFUSALS)
    _assert_accounted(measured)
    assert measured.throughput_per_s > 0, measured.accounting.details
    light = open_rate(server, "half", 0.5 * measured.throughput_per_s, PHASE_S, DEADLINE_S, seed=2,
                      allowed=REFUSALS)
    heavy = open_rate(server, "triple", 3.0 * measured.throughput_per_s, PHASE_S, DEADLINE_S, seed=3,
                      allowed=REFUSALS)
    for phase in (light, heavy):
        _assert_accounted(phase)
        assert phase.accounting.correct > 0, phase.accounting.details
    refused = sum(heavy.accounting.counts[c] for c in REFUSALS)
    assert refused > heavy.accounting.sent / 3, f"3x load was not an overload: {heavy.accounting.counts}"
    ratio = p99_ratio(heavy.describe()["latency_ms"], light.describe()["latency_ms"])
    print(f"capacity {measured.throughput_per_s:.0f}/s; half: {light.describe()['latency_ms']}; "
          f"3x: {heavy.describe()['latency_ms']}, {heavy.accounting.counts}; P99 ratio {ratio}")
    assert ratio is not None and ratio <= MAX_P99_RATIO, (light.describe()["latency_ms"],
                                                          heavy.describe()["latency_ms"])
    assert heavy.accounting.counts[CORRECT] + refused == heavy.accounting.sent
