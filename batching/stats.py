"""Per-model counters behind ModelStatistics: requests, executions, and where time went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from infergate.batching.batcher import QueuedRequest, Stats


@dataclass(slots=True)
class Duration:
    """A count and a total in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats(Stats):
    """Triton's statistics-extension counters for one model version."""

    inference_count: int = 0  # rows computed
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0  # wall-clock ms since the epoch of the last completed batch
    success: Duration = field(default_factory=Duration)  # end-to-end, receipt to response
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)  # by batch size in rows

    def batch_done(self, rows: int, requests: list[QueuedRequest]) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        t = requests[0].timings
        input_ns = t.compute_start_ns - t.dispatched_ns
        infer_ns = t.compute_end_ns - t.compute_start_ns
        output_ns = t.done_ns - t.compute_end_ns
        by_size = self.batches.get(rows)
        if by_size is None:
            by_size = self.batches[rows] = BatchDurations()
        by_size.compute_input.add(input_ns)
        by_size.compute_infer.add(infer_ns)
        by_size.compute_output.add(output_ns)
        # Triton attributes the whole batch's compute time to each request in it.
        for request in requests:
            timings = request.timings
            self.queue.add(timings.dispatched_ns - timings.enqueued_ns)
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)

    def request_succeeded(self, duration_ns: int) -> None:
        self.success.add(duration_ns)

    def request_failed(self, duration_ns: int) -> None:
        self.fail.add(duration_ns)
