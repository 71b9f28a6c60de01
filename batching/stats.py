"""Per-model counters behind ModelStatistics: requests, executions, and where time went."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from infergate.batching.batcher import QueuedRequest, Stats, Tensors

# Raw telemetry samples are folded into sketches (server/telemetry/) once this many wait, or
# FOLD_INTERVAL_NS after the last fold, whichever comes first: the hot path only appends.
FOLD_AT_SAMPLES = 4096
FOLD_INTERVAL_NS = 1_000_000_000
DRIFT_PENDING_BATCHES = 8  # sampled batches held for the drift monitor; a full hold triggers a fold


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
    # Feature transforms, per request like compute_input (which includes them, as in Triton's
    # "compute_input": everything that prepares the runtime's inputs).
    transform: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)  # by batch size in rows

    # -- telemetry (server/telemetry/aggregate.py folds these; None sink: telemetry off) ----------
    # Appends only, on the event loop thread: deque.append and popleft are atomic, so the
    # metrics thread may drain them while requests go on.
    sink: Callable[[], None] | None = None  # folds the samples below into sketches
    e2e_ns: deque[int] = field(default_factory=deque)  # per successful request, receipt to response
    queue_ns: deque[int] = field(default_factory=deque)  # per request, enqueued to batch formed
    # Per batch: (rows, requests, compute_ns, busy_ns); busy = compute + transforms, the device's time.
    batch_log: deque[tuple[int, int, int, int]] = field(default_factory=deque)
    last_done_ns: int = 0  # monotonic time of the last batch: samples are attributed to it
    fold_due_ns: int = 0
    busy_ns: int = 0  # compute + transform time of every batch, summed: what cost is charged on
    in_flight: int = 0  # requests received and not yet answered
    # Rows computed whose request nobody waited for any more (cancelled, or its deadline passed while it ran):
    # the work admission and the checks before a batch starts keep from happening; 0 on a healthy server.
    computed_unanswered_rows: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed requests by gRPC status code name
    drift_every: int = 0  # sample every Nth batch's inputs for the drift monitor; 0 = off
    drift_pending: deque[list[Tensors]] = field(default_factory=lambda: deque(maxlen=DRIFT_PENDING_BATCHES))
    _batch_seq: int = 0

    def batch_done(self, rows: int, requests: list[QueuedRequest]) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        t = requests[0].timings
        input_ns, infer_ns, output_ns = t.compute_phases_ns()
        busy_ns = t.busy_ns
        transform_ns = busy_ns - infer_ns
        by_size = self.batches.get(rows)
        if by_size is None:
            by_size = self.batches[rows] = BatchDurations()
        by_size.compute_input.add(input_ns)
        by_size.compute_infer.add(infer_ns)
        by_size.compute_output.add(output_ns)
        self.busy_ns += busy_ns
        sink = self.sink
        is_recording = sink is not None
        append_queue = self.queue_ns.append
        # Triton attributes the whole batch's compute time to each request in it.
        for request in requests:
            timings = request.timings
            queue_ns = timings.dispatched_ns - timings.enqueued_ns
            self.queue.add(queue_ns)
            self.compute_input.add(input_ns)
            self.compute_infer.add(infer_ns)
            self.compute_output.add(output_ns)
            if transform_ns:
                self.transform.add(transform_ns)
            if is_recording:
                append_queue(queue_ns)
        if sink is None:
            return
        self.batch_log.append((rows, len(requests), infer_ns, busy_ns))
        self.last_done_ns = t.done_ns
        is_drift_full = False
        if self.drift_every:
            self._batch_seq += 1
            if self._batch_seq % self.drift_every == 0:
                self.drift_pending.append([request.inputs for request in requests])
                is_drift_full = len(self.drift_pending) == DRIFT_PENDING_BATCHES
        self._maybe_fold(t.done_ns, is_drift_full)

    def _maybe_fold(self, now_ns: int, is_due: bool = False) -> None:
        if self.sink is not None and (len(self.queue_ns) >= FOLD_AT_SAMPLES or now_ns >= self.fold_due_ns or is_due):
            self.fold_due_ns = now_ns + FOLD_INTERVAL_NS
            self.sink()

    def part_done(self, rows: int, phases_ns: tuple[int, int, int, int], busy_ns: int, done_ns: int,
                  e2e_ns: int | None = None) -> None:
        """Work done for a request outside this model's own batcher: a cascade records each request here, and
        each stage's share of it in a record of its own (with `e2e_ns`, the stage's latency for it). `busy_ns`
        is the device time this work is charged, e.g. its rows' share of a stage's batch; `phases_ns` are
        (queue, compute_input, compute_infer, compute_output) as Triton's statistics name them."""
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        queue_ns, input_ns, compute_ns, output_ns = phases_ns  # (queue, compute_input, _infer, _output)
        self.queue.add(queue_ns)
        # All three compute phases, counted alike: perf_analyzer refuses statistics whose counts differ.
        self.compute_input.add(input_ns)
        self.compute_infer.add(compute_ns)
        self.compute_output.add(output_ns)
        self.busy_ns += busy_ns
        if e2e_ns is not None:
            self.success.add(e2e_ns)
        if self.sink is None:
            return
        if e2e_ns is not None:
            self.e2e_ns.append(e2e_ns)
        self.queue_ns.append(queue_ns)
        self.batch_log.append((rows, 1, compute_ns, busy_ns))
        self.last_done_ns = done_ns
        self._maybe_fold(done_ns)

    def computed_unanswered(self, rows: int) -> None:
        self.computed_unanswered_rows += rows

    def request_succeeded(self, duration_ns: int) -> None:
        self.success.add(duration_ns)
        if self.sink is not None:
            self.e2e_ns.append(duration_ns)

    def request_failed(self, duration_ns: int, code: str = "UNKNOWN") -> None:
        """`code`: the gRPC status code name the client gets (a fixed set: safe as a metric label)."""
        self.fail.add(duration_ns)
        self.failures[code] = self.failures.get(code, 0) + 1
