"""The harness's pure decisions, stepped without a server or a clock: schedules, percentiles, sweeps, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from infergate.bench.loadgen import stats
from infergate.bench.loadgen.points import Point, client_verdict, goodput, meets_slo
from infergate.bench.loadgen.sweep import SweepPlan, next_load


def test_poisson_schedule_has_the_exact_count_sorted_within_the_window() -> None:
    offsets = stats.poisson_schedule(5000, 10.0, np.random.default_rng(0))
    assert offsets.size == 5000
    assert np.all(np.diff(offsets) >= 0)
    assert offsets[0] >= 0 and offsets[-1] < 10 * 10**9


def test_poisson_schedule_gaps_are_exponential() -> None:
    gaps_s = np.diff(stats.poisson_schedule(20000, 20.0, np.random.default_rng(1))) / 1e9
    mean = 1 / 1000
    assert gaps_s.mean() == pytest.approx(mean, rel=0.03)
    assert gaps_s.std() == pytest.approx(mean, rel=0.05)  # exponential: standard deviation equals the mean
    assert np.mean(gaps_s > mean) == pytest.approx(np.exp(-1), abs=0.02)  # P(gap > mean) = 1/e


def test_poisson_schedule_is_empty_for_nothing_to_send() -> None:
    assert stats.poisson_schedule(0, 5.0, np.random.default_rng(0)).size == 0
    assert stats.poisson_schedule(10, 0.0, np.random.default_rng(0)).size == 0


def test_percentiles_and_cdf() -> None:
    latencies = np.arange(1, 1001, dtype=np.int64) * 1_000_000  # 1 ... 1000 ms
    p = stats.percentiles_ms(latencies)
    assert p["p50"] == pytest.approx(500.5)
    assert p["p99"] == pytest.approx(990.01)
    assert p["p99.9"] == pytest.approx(999.001)
    cdf = stats.cdf_points_ms(latencies)
    assert [q for q, _ in cdf] == sorted(q for q, _ in cdf)
    assert 0.9999 not in [q for q, _ in cdf]  # 1000 samples cannot resolve the 1-in-10,000 tail
    assert stats.percentiles_ms(np.empty(0, np.int64))["p50"] is None
    assert stats.cdf_points_ms(np.empty(0, np.int64)) == []


def test_split_evenly() -> None:
    assert stats.split_evenly(16, 3) == [6, 5, 5]
    assert stats.split_evenly(2, 4) == [1, 1, 0, 0]


def test_geometric_sweep_stops_at_the_first_break() -> None:
    plan = SweepPlan(start=100, factor=2, max_steps=10)
    assert next_load(plan, []) == 100
    assert next_load(plan, [(100, True)]) == 200
    assert next_load(plan, [(100, True), (200, True)]) == 400
    assert next_load(plan, [(100, True), (200, True), (400, False)]) is None


def test_sweep_refines_by_bisection_between_last_good_and_first_bad() -> None:
    plan = SweepPlan(start=100, factor=2, refine=2)
    history = [(100.0, True), (200.0, True), (400.0, False)]
    assert next_load(plan, history) == 300
    assert next_load(plan, [*history, (300.0, True)]) == 350
    assert next_load(plan, [*history, (300.0, True), (350.0, False)]) is None


def test_integer_sweep_and_explicit_steps() -> None:
    plan = SweepPlan(start=1, factor=1.5, integer=True, refine=3)
    assert next_load(plan, [(1, True)]) == 2  # 1.5 rounds to 2: always at least one more client
    assert next_load(plan, [(1, True), (2, True), (3, True), (4, False)]) is None  # nothing between 3 and 4
    steps = SweepPlan(steps=(1, 4, 16), max_steps=10)
    assert next_load(steps, [(1, True)]) == 4
    assert next_load(steps, [(1, True), (4, True), (16, True)]) is None
    assert next_load(SweepPlan(steps=(1, 4), refine=1), [(1, False)]) is None  # nothing held: no bisection
    assert next_load(SweepPlan(max_steps=2), [(1, True), (2, True)]) is None


def _point(**fields: object) -> Point:
    base: dict[str, object] = {"target": "t", "model": "m", "mode": "open", "rate_per_s": 1000.0, "ok": 1000,
                               "sent_per_s": 1000.0, "latency_ms": {"p50": 1.0, "p99": 5.0},
                               "send_lag_ms": {"p50": 0.1, "p99": 0.5, "max": 1.0}, "client_cpu_pct": 30.0,
                               "client_max_process_cpu_pct": 30.0, "machine_cpu_pct": 60.0}
    base.update(fields)
    return Point(**base)  # type: ignore[arg-type]


def test_slo_and_goodput() -> None:
    assert meets_slo(_point(), slo_p99_ms=10, max_error_rate=0.0)
    assert not meets_slo(_point(latency_ms={"p99": 11.0}), slo_p99_ms=10, max_error_rate=0.0)
    assert not meets_slo(_point(errors={"UNAVAILABLE": 2}), slo_p99_ms=10, max_error_rate=0.001)
    assert meets_slo(_point(errors={"UNAVAILABLE": 1}), slo_p99_ms=10, max_error_rate=0.001)
    assert not meets_slo(_point(client_limited=True), slo_p99_ms=10, max_error_rate=0.0)
    points = [_point(throughput_per_s=100, slo_ok=True), _point(throughput_per_s=300, slo_ok=True),
              _point(throughput_per_s=400, slo_ok=False)]
    best = goodput(points)
    assert best is not None and best.throughput_per_s == 300
    assert goodput([_point(slo_ok=False)]) is None


def test_report_tells_a_broken_slo_from_an_unjudged_one() -> None:
    """A client-limited point does not count toward goodput, but its P99 did not break the SLO."""
    from infergate.bench.loadgen import report

    points = [_point(slo_ok=False, latency_ms={"p99": 80.0}),
              _point(slo_ok=False, client_limited=True, warnings=["a client process used 99% of a core"])]
    text = report.markdown(report.document(report.host_metadata(), "infergate bench ...", {}, {"t": {}}, points))
    assert "| SLO broken |" in text
    assert "| SLO not judged (the client was the limit); CLIENT-LIMITED: a client process used 99% of a core |" in text


def test_client_verdict_names_a_rate_the_client_could_not_generate() -> None:
    warnings, limited = client_verdict(_point(), cores=2)
    assert (warnings, limited) == ([], False)
    warnings, limited = client_verdict(_point(sent_per_s=900.0), cores=2)
    assert limited
    assert warnings == ["the client could not generate 1000 requests/s: it sent 900.0/s, the median request 0.1 ms "
                        "behind schedule (limits: 95% of the rate, 10 ms), with 1 process(es); these figures are the "
                        "client's, not the server's"]
    _, limited = client_verdict(_point(send_lag_ms={"p50": 15.0, "p99": 50.0, "max": 80.0}), cores=2)
    assert limited
    warnings, limited = client_verdict(_point(send_lag_ms={"p50": 0.5, "p99": 30.0, "max": 80.0}), cores=2)
    assert not limited and warnings[0].startswith("1% of requests left the client over 30.0 ms late")


def test_client_verdict_on_cpu() -> None:
    warnings, limited = client_verdict(_point(client_max_process_cpu_pct=95.0, client_cpu_pct=95.0), cores=2)
    assert limited and "saturated" in warnings[0]
    warnings, limited = client_verdict(_point(machine_cpu_pct=99.0, client_cpu_pct=80.0), cores=2)
    assert not limited
    assert warnings == ["the machine was 99% busy and the client used 40% of that: client and server compete for "
                        "the cores"]


def test_channels_follow_the_load_of_each_process() -> None:
    from infergate.bench.loadgen.session import channels_for

    assert [channels_for("closed", c) for c in (1, 6, 7, 16, 64, 1000)] == [1, 1, 2, 3, 8, 8]  # perf_analyzer's 1 per 6
    assert [channels_for("open", r) for r in (100, 1000, 2500)] == [1, 1, 3]
