"""Per-model aggregation: folds a model's raw samples into sketches, windows and histograms."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infergate.batching.stats import ModelStats
from infergate.server.telemetry import histograms, sketch
from infergate.server.telemetry.cost import Price, cost_per_inference_usd, cost_usd
from infergate.server.telemetry.drift import DriftMonitor
from infergate.server.telemetry.windows import WINDOW_SLOTS, SlidingWindows

logger = logging.getLogger(__name__)

METRICS = ("request", "queue", "compute")  # latencies sketched: end to end, in the queue, in the runtime
QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
# A window vector: one sketch per metric, then the counters below.
COUNTERS = ("requests", "inferences", "batches", "busy_ns")
_COUNTERS_AT = len(METRICS) * sketch.BUCKETS
VECTOR_LEN = _COUNTERS_AT + len(COUNTERS)


@dataclass(frozen=True, slots=True)
class Export:
    """A consistent copy of what a scrape reads: Prometheus buckets and sums, and PSI per feature."""

    latency_buckets: np.ndarray  # (metric, bucket) counts, METRICS order
    latency_sum_ns: np.ndarray  # per metric
    batch_buckets: np.ndarray
    batch_sum_rows: int
    drift_psi: dict[str, float] | None  # None without a drift profile


@dataclass(frozen=True, slots=True)
class ModelLabels:
    """The label values of one served model: all from the repository, never from a request."""

    model: str
    version: str
    stage: str = ""  # the cascade stage ("" for a model served alone); cascades are not built yet
    device: str = "cpu"


def _drain(samples: deque[Any]) -> list[Any]:
    # popleft exactly the items present now: the loop thread may append meanwhile.
    return [samples.popleft() for _ in range(len(samples))]


class ModelTelemetry:
    """Everything telemetry knows about one model version; fold() runs on either thread, under a lock."""

    def __init__(self, stats: ModelStats, labels: ModelLabels, price: Price,
                 clock_ns: Callable[[], int] = time.monotonic_ns,
                 drift: DriftMonitor | None = None) -> None:
        self.stats = stats
        self.labels = labels
        self.price = price
        self._clock_ns = clock_ns
        self.drift = drift
        self._lock = threading.Lock()
        self.windows = SlidingWindows((VECTOR_LEN,), start_ns=clock_ns())
        # Since start, for Prometheus: non-cumulative bucket counts and exact sums.
        self.latency_buckets = np.zeros((len(METRICS), len(histograms.LATENCY_BOUNDS_NS) + 1), np.int64)
        self.latency_sum_ns = np.zeros(len(METRICS), np.int64)
        self.batch_buckets = np.zeros(len(histograms.BATCH_BOUNDS) + 1, np.int64)
        self.batch_sum_rows = 0
        self._has_failed = False
        self._has_drift_failed = False
        stats.sink = self.fold

    def fold(self) -> None:
        """Moves the model's raw samples into the sketches; never raises (it runs on the request path)."""
        try:
            with self._lock:
                self._fold_locked()
        except Exception:
            if not self._has_failed:
                self._has_failed = True
                logger.exception("model '%s': telemetry could not fold its samples; latencies may lag",
                                 self.labels.model)

    def export(self) -> Export:
        """Folds, then copies under the lock the fold writes under (scrapes run on the metrics thread)."""
        self.fold()
        with self._lock:
            return Export(self.latency_buckets.copy(), self.latency_sum_ns.copy(), self.batch_buckets.copy(),
                          self.batch_sum_rows, self.drift.current() if self.drift is not None else None)

    def drift_psi(self) -> dict[str, float] | None:
        """The current PSI per input (None without a drift profile), read under the fold's lock."""
        with self._lock:
            return self.drift.current() if self.drift is not None else None

    def _fold_locked(self) -> None:
        stats = self.stats
        batches = _drain(stats.batch_log)
        values = [np.array(_drain(stats.e2e_ns), np.int64), np.array(_drain(stats.queue_ns), np.int64)]
        log = np.array(batches, np.int64).reshape(-1, 4)  # rows, requests, compute_ns, busy_ns
        values.append(np.repeat(log[:, 2], log[:, 1]))  # each request saw its batch's compute time
        if any(len(v) for v in values):
            self._fold_samples(values, log)
        if self.drift is not None and stats.drift_pending:
            # Apart from the latencies, which are already folded: a drift failure must not lose them.
            try:
                self.drift.fold(stats.drift_pending)
            except Exception:
                stats.drift_pending.clear()
                if not self._has_drift_failed:
                    self._has_drift_failed = True
                    logger.exception("model '%s': drift could not fold its sampled batches; PSI is stale",
                                     self.labels.model)

    def _fold_samples(self, values: list[np.ndarray], log: np.ndarray) -> None:
        stats = self.stats
        vector = np.zeros(VECTOR_LEN, np.int64)
        for i, samples in enumerate(values):
            vector[i * sketch.BUCKETS:(i + 1) * sketch.BUCKETS] = sketch.bucket_counts(samples)
            self.latency_buckets[i] += histograms.bucket_counts(samples, histograms.LATENCY_BOUNDS_NS)
            self.latency_sum_ns[i] += int(samples.sum())
        vector[_COUNTERS_AT:] = (len(values[0]), int(log[:, 0].sum()), len(log), int(log[:, 3].sum()))
        self.batch_buckets += histograms.bucket_counts(log[:, 0], histograms.BATCH_BOUNDS)
        self.batch_sum_rows += int(log[:, 0].sum())
        self.windows.add(stats.last_done_ns or self._clock_ns(), vector)

    def summary(self, window: str) -> dict[str, Any]:
        """Rate, percentiles (ms), batch size and cost over one window ("1m", "5m" or "all")."""
        self.fold()
        now_ns = self._clock_ns()
        with self._lock:
            if window == "all":
                vector, seconds = self.windows.total.copy(), max(now_ns - self.windows.start_ns, 1) / 1e9
            else:
                slots = WINDOW_SLOTS[window]
                vector, seconds = self.windows.window(slots, now_ns), self.windows.window_seconds(slots, now_ns)
        requests, inferences, batches, busy_ns = (int(v) for v in vector[_COUNTERS_AT:])
        latency_ms: dict[str, dict[str, float | None]] = {}
        for i, metric in enumerate(METRICS):
            counts = vector[i * sketch.BUCKETS:(i + 1) * sketch.BUCKETS]
            latency_ms[metric] = {name: _ms(sketch.quantile(counts, q)) for name, q in QUANTILES.items()}
        per_inference = cost_per_inference_usd(self.price.usd_per_hour, busy_ns, inferences)
        return {
            "seconds": round(seconds, 3),
            "requests": requests,
            "requests_per_s": requests / seconds,
            "inferences": inferences,
            "batches": batches,
            "mean_batch_rows": inferences / batches if batches else None,
            "busy_s": busy_ns / 1e9,
            "cost_usd": cost_usd(self.price.usd_per_hour, busy_ns),
            "cost_per_1k_inferences_usd": per_inference * 1000 if per_inference is not None else None,
            "latency_ms": latency_ms,
        }


def _ms(value_ns: float | None) -> float | None:
    return None if value_ns is None else value_ns / 1e6
