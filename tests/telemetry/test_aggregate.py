"""Folding a model's raw samples: sketches, windows, Prometheus buckets, with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from infergate.batching.stats import ModelStats
from infergate.server.telemetry import drift, histograms
from infergate.server.telemetry.aggregate import ModelLabels, ModelTelemetry
from infergate.server.telemetry.cost import Price

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ns = 1000 * S

    def __call__(self) -> int:
        return self.now_ns


def test_fold_feeds_windows_histograms_and_cost() -> None:
    clock, stats = Clock(), ModelStats()
    telemetry = ModelTelemetry(stats, ModelLabels("m", "1"), Price(3.6, "test"), clock_ns=clock)
    assert stats.sink is not None
    for i in range(100):
        stats.e2e_ns.append(1_000_000 + i * 1000)  # 1.0 .. 1.099 ms
        stats.queue_ns.append(200_000)
    stats.batch_log.extend([(10, 10, 500_000, 600_000)] * 10)  # 10 batches of 10 rows, 0.6 ms busy each
    stats.last_done_ns = clock.now_ns
    clock.now_ns += 5 * S
    summary = telemetry.summary("1m")
    assert summary["requests"] == 100 and summary["inferences"] == 100 and summary["batches"] == 10
    assert summary["mean_batch_rows"] == 10
    assert summary["requests_per_s"] == 100 / 5
    latency = summary["latency_ms"]
    assert abs(latency["request"]["p50"] - 1.049) <= 0.011
    assert abs(latency["queue"]["p99"] - 0.2) <= 0.002
    assert abs(latency["compute"]["p50"] - 0.5) <= 0.005
    # 6 ms busy at 3.6 USD/h = 6e-6 USD, over 100 inferences.
    assert abs(summary["cost_usd"] - 6e-6) < 1e-15
    assert abs(summary["cost_per_1k_inferences_usd"] - 6e-5) < 1e-15
    assert telemetry.latency_buckets[0].sum() == 100
    assert telemetry.latency_sum_ns[1] == 100 * 200_000
    assert telemetry.batch_buckets[np.searchsorted(histograms.BATCH_BOUNDS, 10)] == 10
    # Two minutes later the 1-minute window is empty; since start still counts everything.
    clock.now_ns += 120 * S
    assert telemetry.summary("1m")["requests"] == 0
    assert telemetry.summary("all")["requests"] == 100
    assert not stats.e2e_ns and not stats.queue_ns and not stats.batch_log


def test_histogram_bounds_are_inclusive_upper() -> None:
    bounds = histograms.LATENCY_BOUNDS_NS
    counts = histograms.bucket_counts(np.array([bounds[0], bounds[0] + 1, 1e12]), bounds)
    assert counts[0] == 1 and counts[1] == 1 and counts[-1] == 1
    pairs = histograms.cumulative_buckets(counts, histograms.LATENCY_BOUNDS_S)
    assert pairs[0] == ("4.7e-05", 1.0) and pairs[-1] == ("+Inf", 3.0)


def test_a_failing_drift_fold_keeps_the_latencies(caplog: pytest.LogCaptureFixture) -> None:
    clock, stats = Clock(), ModelStats()
    telemetry = ModelTelemetry(stats, ModelLabels("m", "1"), Price(3.6, "test"), clock_ns=clock)
    profile = drift.build_profile(np.random.default_rng(0).normal(size=(1000, 3)), "INPUT0")
    telemetry.drift = drift.DriftMonitor("m", profile, threshold=0.2)
    stats.e2e_ns.extend([1_000_000] * 10)
    stats.queue_ns.extend([100_000] * 10)
    stats.batch_log.append((10, 10, 500_000, 500_000))
    stats.drift_pending.append([{"INPUT0": np.zeros((2, 5))}])  # 10 values: not rows of 3 features
    stats.last_done_ns = clock.now_ns
    with caplog.at_level("ERROR"):
        assert telemetry.summary("all")["requests"] == 10
    assert "drift could not fold" in caplog.text and not stats.drift_pending
    # Without a batch dim (max_batch_size 0) a request's input is one row of the profile's width.
    stats.drift_pending.append([{"INPUT0": np.zeros(3)}])
    telemetry.fold()
    assert not stats.drift_pending
