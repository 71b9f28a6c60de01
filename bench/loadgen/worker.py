"""One client process: grpc.aio channels sending pre-serialised requests in a closed or open loop."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from infergate.bench.loadgen.workload import CONNECT_TIMEOUT_S, INFER_METHOD, decode_response, mismatch

logger = logging.getLogger(__name__)

# Separate TCP connections per channel (grpc would otherwise share one subchannel between equal channels);
# no message size limit on the client side.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1)]
PROGRESS_PERIOD_S = 0.25  # how often a worker publishes its count of finished requests
DRAIN_GRACE_S = 2.0  # after the last request's deadline, how long to wait before cancelling what is left
WRONG_ANSWER = "WRONG_ANSWER"  # the status a response that failed its correctness check is counted under
UNFINISHED = "UNFINISHED"  # no answer before the drain ended (cancelled by the client)

# The shared per-worker progress counters, set by the pool's initializer (multiprocessing.RawArray of int64).
_progress: Any = None


@dataclass(frozen=True)
class WorkerSpec:
    """What one client process does for one point. Times are CLOCK_MONOTONIC ns, shared by all processes."""

    index: int
    target: str
    requests: tuple[bytes, ...]  # serialised ModelInferRequests, sent in turn
    expected: tuple[dict[str, np.ndarray], ...] | None  # outputs per request, when known
    mode: str  # "closed" or "open"
    concurrency: int  # closed: this process's requests in flight
    offsets_ns: np.ndarray | None  # open: this process's send times from start_ns (warm-up included)
    request_count: int | None  # closed: measured requests of this process; None: bounded by the window
    channels: int
    start_ns: int
    warmup_s: float
    window_s: float  # the measurement window; with request_count, the most it may take
    timeout_s: float  # each request's gRPC deadline
    check_every: int  # decode and check every Nth response; 0: none


@dataclass
class WorkerResult:
    """Raw observations of one process; the runner merges them into a Point."""

    index: int
    latencies_ns: np.ndarray  # successful requests sent in the window (open loop: from their scheduled time)
    done_ns: np.ndarray  # completion times of all successful requests, warm-up included
    send_ns: np.ndarray  # actual send times of every request, warm-up included
    lags_ns: np.ndarray  # open loop: send minus scheduled time of the window's requests
    errors: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    checked: int = 0
    first_wrong: str | None = None
    window_end_ns: int = 0  # end of the window (count-bounded: the last measured completion)
    cpu_s: float = 0.0  # this process's user+system CPU from the window's start until it stopped sending
    cpu_wall_s: float = 0.0  # the wall time cpu_s was measured over
    fatal: str | None = None  # could not run at all (e.g. connection failed)


class _Recorder:
    """Collects each answer; decides what falls in the window and what is checked."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.w0 = spec.start_ns + int(spec.warmup_s * 1e9)
        self.w1 = self.w0 + int(spec.window_s * 1e9)
        self.latencies: list[int] = []
        self.done: list[int] = []
        self.sends: list[int] = []
        self.lags: list[int] = []
        self.errors: dict[str, int] = {}
        self.ok = self.checked = self.answers = 0
        self.first_wrong: str | None = None
        self.last_measured_ns = 0
        self.cpu_at_w0: tuple[int, float] | None = None  # (monotonic ns, CPU s) when the window opened
        self.cpu_at_stop: tuple[int, float] | None = None  # ... when this process stopped sending

    def mark_window_start(self) -> None:
        self.cpu_at_w0 = (time.monotonic_ns(), _cpu_s())

    def mark_sending_done(self) -> None:
        self.cpu_at_stop = (time.monotonic_ns(), _cpu_s())

    def cpu_usage(self) -> tuple[float, float]:
        """(CPU s, wall s) from the window's start until sending stopped (the drain's idle wait excluded)."""
        if self.cpu_at_w0 is None:
            return 0.0, 0.0
        stop = self.cpu_at_stop or (time.monotonic_ns(), _cpu_s())
        return stop[1] - self.cpu_at_w0[1], (stop[0] - self.cpu_at_w0[0]) / 1e9

    def record(self, request_index: int, scheduled_ns: int, done_ns: int, response: bytes | None,
               status: str | None) -> None:
        self.answers += 1
        measured = self.w0 <= scheduled_ns < self.w1
        if status is None and self.spec.expected is not None and self.spec.check_every \
                and self.answers % self.spec.check_every == 0:
            self.checked += int(measured)
            problem = mismatch(decode_response(response or b""), self.spec.expected[request_index])
            if problem is not None:
                status = WRONG_ANSWER
                self.first_wrong = self.first_wrong or problem
        if status is None:
            self.done.append(done_ns)
            if measured:
                self.ok += 1
                self.latencies.append(done_ns - scheduled_ns)
        elif measured:
            self.errors[status] = self.errors.get(status, 0) + 1
        if measured:
            self.last_measured_ns = max(self.last_measured_ns, done_ns)

    def result(self, window_end_ns: int, cpu_s: float, cpu_wall_s: float) -> WorkerResult:
        return WorkerResult(self.spec.index, np.array(self.latencies, np.int64), np.array(self.done, np.int64),
                            np.array(self.sends, np.int64), np.array(self.lags, np.int64), self.errors, self.ok,
                            self.checked, self.first_wrong, window_end_ns, cpu_s, cpu_wall_s)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads: grpc's pollers included
    return usage.ru_utime + usage.ru_stime


async def _sleep_until(t_ns: int) -> None:
    # asyncio may wake a timer up to its clock resolution early: sleep again until the time has come.
    while (delay := (t_ns - time.monotonic_ns()) / 1e9) > 0:
        await asyncio.sleep(delay)


async def _publish_progress(index: int, recorder: _Recorder) -> None:
    while True:
        if _progress is not None:
            _progress[index] = recorder.answers
        await asyncio.sleep(PROGRESS_PERIOD_S)


async def _closed_loop(spec: WorkerSpec, calls: list[Any], rec: _Recorder) -> None:
    tickets = [spec.request_count]  # shared by this process's clients: measured requests left
    hard_end = rec.w1
    counter = [0]

    async def client(call: Any) -> None:
        while True:
            now = time.monotonic_ns()
            if now >= hard_end:
                return
            if now >= rec.w0 and tickets[0] is not None:
                if tickets[0] <= 0:
                    return
                tickets[0] -= 1
            i = counter[0] % len(spec.requests)
            counter[0] += 1
            rec.sends.append(now)
            try:
                response, status = await call(spec.requests[i], timeout=spec.timeout_s), None
            except grpc.aio.AioRpcError as exc:
                response, status = None, exc.code().name
            rec.record(i, now, time.monotonic_ns(), response, status)

    await asyncio.gather(*(client(calls[k % len(calls)]) for k in range(spec.concurrency)))
    rec.mark_sending_done()


async def _open_loop(spec: WorkerSpec, calls: list[Any], rec: _Recorder) -> None:
    assert spec.offsets_ns is not None
    schedule = (spec.offsets_ns + spec.start_ns).tolist()
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled_ns: int) -> None:
        try:
            response, status = await calls[i % len(calls)](spec.requests[i % len(spec.requests)],
                                                          timeout=spec.timeout_s), None
        except grpc.aio.AioRpcError as exc:
            response, status = None, exc.code().name
        except asyncio.CancelledError:
            response, status = None, UNFINISHED
        rec.record(i % len(spec.requests), scheduled_ns, time.monotonic_ns(), response, status)

    i, n = 0, len(schedule)
    while i < n:
        now = time.monotonic_ns()
        while i < n and schedule[i] <= now:
            rec.sends.append(now)
            if rec.w0 <= schedule[i] < rec.w1:
                rec.lags.append(now - schedule[i])
            task = asyncio.ensure_future(one(i, schedule[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await _sleep_until(schedule[i])
    rec.mark_sending_done()
    if tasks:
        await asyncio.wait(list(tasks), timeout=spec.timeout_s + DRAIN_GRACE_S)
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks))


async def _run(spec: WorkerSpec) -> WorkerResult:
    rec = _Recorder(spec)
    channels = [grpc.aio.insecure_channel(spec.target, options=CHANNEL_OPTIONS) for _ in range(spec.channels)]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            result = rec.result(rec.w1, 0.0, 0.0)
            result.fatal = f"cannot reach {spec.target}: no connection within {CONNECT_TIMEOUT_S:g} s"
            return result
        calls = [c.unary_unary(INFER_METHOD) for c in channels]
        progress = asyncio.ensure_future(_publish_progress(spec.index, rec))

        async def sample_cpu_at_w0() -> None:
            await _sleep_until(rec.w0)
            rec.mark_window_start()

        sampler = asyncio.ensure_future(sample_cpu_at_w0())
        await _sleep_until(spec.start_ns)
        loop: Callable[[WorkerSpec, list[Any], _Recorder], Coroutine[Any, Any, None]] = (
            _closed_loop if spec.mode == "closed" else _open_loop)
        await loop(spec, calls, rec)
        sampler.cancel()
        progress.cancel()
        end = rec.w1 if spec.request_count is None or spec.mode == "open" else rec.last_measured_ns
        if _progress is not None:
            _progress[spec.index] = rec.answers
        return rec.result(end, *rec.cpu_usage())
    finally:
        for channel in channels:
            await channel.close()


def init_worker(progress: Any) -> None:
    """Pool initializer: the shared progress counters."""
    global _progress
    _progress = progress
    logging.basicConfig(level=logging.WARNING)


def run_worker(spec: WorkerSpec) -> WorkerResult:
    """Entry point in a client process: runs one point on uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(spec))
    return uvloop.run(_run(spec))  # type: ignore[no-any-return]
