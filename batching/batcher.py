"""DynamicBatcher: one per model; queues requests, dispatches batches to runtime instances."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infergate.batching.admission import (
    SLOW_BATCH_DEVIATIONS,
    Backlog,
    late_start,
    refusal,
    smoothed_batch_us,
    too_late_to_start,
)
from infergate.batching.faults import plan_after_failure
from infergate.batching.policy import WAIT_FOR_ARRIVAL, BatchDecision, BatchLimits, decide, effective_timeout_us
from infergate.batching.timer import LOOP_TIMER_MIN_US, PRECISE_TIMER, TimerHandle
from infergate.models.errors import (
    CannotFinish,
    DeadlineExceeded,
    ExecutionTimeout,
    InferError,
    InvalidInput,
    ModelUnavailable,
    QueueFull,
)
from infergate.models.runtime import StopToken

logger = logging.getLogger(__name__)

GAP_SMOOTHING = 1 / 8  # weight of the newest gap in the mean time between arrivals
GAP_CAP_DELAYS = 4  # gaps are capped at this many max_queue_delays, so a burst after idle time
                    # brings the mean down within ~10 arrivals; an arrival at an idle model counts as one
# Executions past their timeout that may still be running (a runtime that cannot be interrupted leaves its
# thread behind) per instance, before the model stops replacing instances and refuses requests instead.
MAX_HUNG_PER_INSTANCE = 2

Tensors = Mapping[str, np.ndarray]
# Runs one assembled batch (blocking, off the event loop): inputs with the batch dim first -> outputs. The
# StopToken is its execution's: stopped when the execution runs past --model-execution-timeout-s, or at shutdown.
ExecuteFn = Callable[[dict[str, np.ndarray], StopToken], Mapping[str, np.ndarray]]
# Builds the runtime's inputs from the requests' inputs (blocking, off the event loop); replaces the
# plain concatenation when a model declares feature transforms (models/features.py).
AssembleFn = Callable[[list[Tensors]], dict[str, np.ndarray]]


@dataclass(slots=True, eq=False)
class Timings:
    """Monotonic nanosecond timestamps of one request's trip through the batcher."""

    enqueued_ns: int = 0
    dispatched_ns: int = 0  # batch formed and handed to an instance
    transform_start_ns: int = 0  # feature transforms (0 when the model has none)
    transform_end_ns: int = 0
    compute_start_ns: int = 0  # after input assembly (and transforms)
    compute_end_ns: int = 0  # runtime returned
    done_ns: int = 0  # outputs split per request
    batch_rows: int = 0  # rows in the batch this request ran in

    def compute_phases_ns(self) -> tuple[int, int, int]:
        """(compute_input, compute_infer, compute_output) ns of its batch, as Triton's statistics name them."""
        return (self.compute_start_ns - self.dispatched_ns, self.compute_end_ns - self.compute_start_ns,
                self.done_ns - self.compute_end_ns)

    @property
    def busy_ns(self) -> int:
        """Its batch's device time: compute and feature transforms, what cost is charged on."""
        return self.compute_end_ns - self.compute_start_ns + self.transform_end_ns - self.transform_start_ns


@dataclass(slots=True, eq=False)
class QueuedRequest:
    """One request waiting in a batcher queue; it carries its own future (no id->future table)."""

    inputs: Tensors  # each with the batch dim first
    rows: int
    future: asyncio.Future[Tensors]
    deadline_ns: int  # absolute monotonic deadline; 0 = none
    finish_by_ns: int = 0  # the client's own deadline (monotonic; 0 = none): its outputs are wanted by then
    level: int = 0  # its priority level's index (0 = level 1)
    is_queued: bool = True  # counted in its queue's live counts: not yet taken for a batch, answered or given up
    timings: Timings = field(default_factory=Timings)


@dataclass(slots=True, eq=False)
class BatchRun:
    """What running one formed batch produced (in an executor thread, handed to the loop)."""

    results: list[Tensors | Exception]  # one per request, in batch order: its outputs or its own error
    executions: list[tuple[int, list[int]]]  # (rows, indexes into the batch) of each execution with outputs


class Execution(StopToken):
    """One batch handed to an instance, as the watchdog of --model-execution-timeout-s and shutdown see it; it is
    its own runtime calls' StopToken (one object a batch: this is on every call's path)."""

    __slots__ = ("batch", "call_started_ns", "is_finished", "is_abandoned", "timer")

    def __init__(self, batch: list[QueuedRequest]) -> None:
        super().__init__()
        self.batch = batch
        self.call_started_ns = 0  # monotonic; when its current runtime call (the first, or a retry) began
        self.is_finished = False  # set by its thread once it makes no more calls, before the loop hears of it
        self.is_abandoned = False  # past its timeout, or at shutdown: its requests were failed and it was stopped
        self.timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class Watchdog:
    """Bounds each runtime call's time: past `timeout_s` its requests fail, the runtime is told to stop it, and a
    fresh executor thread takes its instance's place."""

    timeout_s: float
    new_executor: Callable[[], Executor]  # the replacement instances' threads
    is_interruptible: bool = False  # whether the runtime stops a call when told (Runtime.is_interruptible)


class Stats:
    """Counters a batcher reports to (ModelStatistics); the default records nothing."""

    def batch_done(self, rows: int, requests: list[QueuedRequest]) -> None:
        """Called once per executed batch with the requests that got their outputs."""

    def computed_unanswered(self, rows: int) -> None:
        """Rows computed for requests that were cancelled or had expired by the time their outputs came."""


class DynamicBatcher:
    """Forms batches for one model under BatchLimits and runs them on `instance_count` instances.

    All methods run on the event loop thread; only `execute` runs in `executor`.
    """

    def __init__(
        self,
        model: str,
        limits: BatchLimits,
        execute: ExecuteFn,
        executor: Executor,
        instance_count: int = 1,
        stats: Stats | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        is_inline: bool = False,
        assemble: AssembleFn | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self._execute = execute
        self._assemble = assemble
        self._executor = executor
        self._instances = max(instance_count, 1)
        self._free_instances = self._instances
        self._stats = stats or Stats()
        self._clock_ns = clock_ns
        # One FIFO per priority level; index 0 is level 1, the highest priority.
        self._queues: list[deque[QueuedRequest]] = [deque() for _ in range(limits.priority_levels)]
        # Live counts: requests still waiting, not those answered or given up while queued. Those stay in the
        # deques (`_dead_queued` of them) until they reach a head or outnumber the live ones.
        self._queued = 0
        self._requests_by_level = [0] * limits.priority_levels
        self._rows_by_level = [0] * limits.priority_levels
        self._dead_queued = 0
        # Queue-timeout deadlines, earliest first: each fails its request at the time even while every instance
        # is busy (then no decision runs to notice). Entries of requests no longer queued are dropped lazily.
        self._expiries: list[tuple[int, int, QueuedRequest]] = []
        self._expiry_seq = itertools.count()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_at_ns = 0
        self._mean_batch_us = 0.0  # dispatch to outputs, for admission; 0 until the first batch
        self._batch_deviation_us = 0.0  # its mean absolute deviation: how much longer one batch may take
        self._in_flight: dict[asyncio.Future[Any], Execution] = {}
        self._is_schedule_pending = False
        self._timer: asyncio.TimerHandle | TimerHandle | None = None
        self._timer_at_ns = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_accepting = True
        # Inline: run batches on the loop thread itself. Only for models whose whole batch
        # computes faster than a hand-over to a thread costs (see registry.INLINE_MAX_COMPUTE_S).
        self._is_inline = is_inline and watchdog is None  # the watchdog needs a thread to watch
        self._watchdog = watchdog
        self.hung_executions = 0  # abandoned past their timeout and still running
        self.replaced_instances = 0  # since load
        self.on_health_change: Callable[[], None] | None = None  # told when is_healthy changes
        # Mean time between arrivals (us) while the model is busy, for the adaptive queue delay;
        # starts as if idle.
        self._gap_cap_us = GAP_CAP_DELAYS * limits.max_queue_delay_us
        self._mean_gap_us = float(self._gap_cap_us)
        self._last_arrival_ns = 0

    # -- intake ---------------------------------------------------------------------------

    def submit(self, inputs: Tensors, rows: int, priority: int = 0, timeout_us: int = 0,
               deadline_ns: int = 0) -> asyncio.Future[Tensors]:
        """Queues a validated request; returns a future of its outputs (rows first)."""
        return self.enqueue(inputs, rows, priority, timeout_us, deadline_ns).future

    def enqueue(self, inputs: Tensors, rows: int, priority: int = 0, timeout_us: int = 0,
                deadline_ns: int = 0) -> QueuedRequest:
        """Queues a validated request; its future resolves to its outputs, its timings fill in as it runs.

        Raises QueueFull when its priority level's queue is at max_queue_size, and
        ModelUnavailable when the batcher is stopping.
        """
        if not self._is_accepting:
            raise ModelUnavailable(self.model, "", "the model is being unloaded or the server is shutting down")
        level = priority or self.limits.default_priority_level
        if not 1 <= level <= self.limits.priority_levels:
            raise InvalidInput(
                f"parameter 'priority' is {priority}, expected 0 (default) or 1..{self.limits.priority_levels}"
            )
        if not self.is_healthy:
            raise self._hung_error()
        index = level - 1
        policy = self.limits.policy_for(level)
        if policy.max_queue_size and \
                self._requests_by_level[index] - self._startable_requests(level) >= policy.max_queue_size:
            field = (f"dynamic_batching.priority_queue_policy[{level}].max_queue_size"
                     if level in self.limits.queue_policies else "dynamic_batching.default_queue_policy.max_queue_size")
            raise QueueFull(self.model, policy.max_queue_size, field)
        loop = self._loop or self._bind_loop()
        now_ns = self._clock_ns()
        timeout_us = effective_timeout_us(timeout_us, policy)
        if (deadline_ns or timeout_us) and self._mean_batch_us > 0:
            self._admit(level, rows, (deadline_ns - now_ns) // 1000 if deadline_ns else None, timeout_us or None)
        # Only an arrival that finds the model busy (requests queued or a batch running) measures a
        # real gap. At an idle model it counts as a long one: the time since the last arrival then
        # includes the wait and compute of the last request itself, so a lone closed-loop client
        # would otherwise see its own holds as arrivals coming soon and be held again.
        is_busy = self._queued > 0 or bool(self._in_flight)
        gap_us = min((now_ns - self._last_arrival_ns) // 1000, self._gap_cap_us) if is_busy \
            else self._gap_cap_us
        self._mean_gap_us += (gap_us - self._mean_gap_us) * GAP_SMOOTHING
        self._last_arrival_ns = now_ns
        finish_by_ns = deadline_ns
        if timeout_us:
            queue_deadline_ns = now_ns + timeout_us * 1000
            deadline_ns = min(deadline_ns, queue_deadline_ns) if deadline_ns else queue_deadline_ns
        request = QueuedRequest(inputs, rows, loop.create_future(), deadline_ns, finish_by_ns, index)
        request.timings.enqueued_ns = now_ns
        self._queues[index].append(request)
        self._queued += 1
        self._requests_by_level[index] += 1
        self._rows_by_level[index] += rows
        if timeout_us:
            # A client's own deadline needs no entry: its transport cancels the call then (outputs() sees it).
            self._expire_at(deadline_ns, request)
        if not self._is_schedule_pending:
            # Coalesce: every request that arrives in this loop iteration joins one decision.
            self._is_schedule_pending = True
            loop.call_soon(self._schedule)
        return request

    def _admit(self, level: int, rows: int, deadline_left_us: int | None, queue_timeout_us: int | None) -> None:
        """Raises CannotFinish when the work queued ahead means the request would miss its deadline anyway."""
        reason = refusal(self._backlog(level), rows, deadline_left_us, queue_timeout_us)
        if reason:
            raise CannotFinish(self.model, reason)

    def _backlog(self, level: int) -> Backlog:
        """The live queue ahead of a new request at this level: its own level and the higher ones."""
        return Backlog(sum(self._requests_by_level[:level]), sum(self._rows_by_level[:level]), self.limits.max_rows,
                       self._instances, self._mean_batch_us)

    async def outputs(self, request: QueuedRequest) -> Tensors:
        """Waits for a queued request's outputs. A caller that gives up (its call cancelled, or past the
        client's deadline) frees its place in the queue and in admission's count at once."""
        try:
            return await request.future
        except asyncio.CancelledError:
            self._forget(request)
            raise

    def _take(self, request: QueuedRequest) -> None:
        """Takes a request out of its queue's live counts (it stays in the deque until popped)."""
        request.is_queued = False
        self._queued -= 1
        self._requests_by_level[request.level] -= 1
        self._rows_by_level[request.level] -= request.rows

    def _forget(self, request: QueuedRequest, is_compacting: bool = True) -> None:
        """A queued request was answered or given up: it no longer counts, and the deques are compacted once the
        dead outnumber the live (so each death costs O(1) amortized and the dead hold no memory for long)."""
        if not request.is_queued:
            return
        self._take(request)
        self._dead_queued += 1
        if is_compacting and self._dead_queued > self._queued:
            for queue in self._queues:
                live = [r for r in queue if r.is_queued]
                if len(live) != len(queue):
                    queue.clear()
                    queue.extend(live)
            self._dead_queued = 0

    def _popleft(self, queue: deque[QueuedRequest]) -> QueuedRequest:
        request = queue.popleft()
        if request.is_queued:
            self._take(request)
        else:
            self._dead_queued -= 1
        return request

    def _expire_at(self, deadline_ns: int, request: QueuedRequest) -> None:
        heapq.heappush(self._expiries, (deadline_ns, next(self._expiry_seq), request))
        if len(self._expiries) > 2 * self._queued + 64:
            # Mostly requests that ran before their deadline: drop them, amortized O(1) per entry.
            self._expiries = [e for e in self._expiries if e[2].is_queued]
            heapq.heapify(self._expiries)
        if self._expiry_timer is None or deadline_ns < self._expiry_at_ns:
            self._arm_expiry(self._expiries[0][0])

    def _arm_expiry(self, at_ns: int) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        assert self._loop is not None
        self._expiry_at_ns = at_ns
        self._expiry_timer = self._loop.call_later(max(at_ns - self._clock_ns(), 0) / 1e9, self._on_expiry)

    def _on_expiry(self) -> None:
        """Fails the queued requests whose queue timeout has passed, then waits for the next one's."""
        self._expiry_timer = None
        now_ns = self._clock_ns()
        expiries = self._expiries
        while expiries and (expiries[0][0] <= now_ns or not expiries[0][2].is_queued):
            _, _, request = heapq.heappop(expiries)
            if request.is_queued:
                if not request.future.done():
                    request.future.set_exception(
                        DeadlineExceeded(self.model, (now_ns - request.timings.enqueued_ns) // 1000))
                self._forget(request)
        if expiries:
            self._arm_expiry(expiries[0][0])

    def _startable_requests(self, level: int) -> int:
        """At most how many queued requests of this level the next decision starts at once (not waiting).

        Arrivals in one event-loop turn are decided together, so without this a burst reaching an
        idle model would count the requests about to run against max_queue_size. Each request has
        at least one row, so the free rows bound the requests that can start."""
        free_rows = self._free_instances * max(self.limits.max_batch_size, 1)
        return max(0, free_rows - sum(self._requests_by_level[:level - 1]))

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # Bound lazily: futures and timers must belong to the loop that serves requests.
        self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def _slow_batch_us(self) -> float:
        """A batch time most batches stay within (the mean and twice its deviation, as TCP bounds round trips):
        a request with less than this left would most likely be computed past its deadline."""
        return self._mean_batch_us + SLOW_BATCH_DEVIATIONS * self._batch_deviation_us

    @property
    def queued(self) -> int:
        """Requests waiting (not those answered or given up while queued)."""
        return self._queued

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self) -> None:
        self._is_schedule_pending = False
        try:
            while self._free_instances > 0 and self._queued:
                now_ns = self._clock_ns()
                decision = self._decide(now_ns)
                if decision.count == 0:
                    if decision.wake_in_us is not None:
                        self._arm_timer(now_ns + decision.wake_in_us * 1000)
                    return
                self._dispatch(self._pop(decision.count), decision.rows, now_ns)
        except Exception:
            logger.exception("model '%s': batch scheduling failed; failing queued requests", self.model)
            self._fail_all(InferError(f"internal error while batching for model '{self.model}'"))

    def _decide(self, now_ns: int) -> BatchDecision:
        """Purges abandoned and expired heads, then asks the policy about the live head."""
        rows: list[int] = []
        budget = self.limits.max_rows
        total = 0
        oldest_ns = 0
        for queue in self._queues:
            while queue and self._purge_if_dead(queue[0], now_ns):
                self._popleft(queue)
            for request in queue:
                if self._purge_if_dead(request, now_ns):
                    continue  # removed lazily when it reaches the head
                rows.append(request.rows)
                total += request.rows
                if not oldest_ns or request.timings.enqueued_ns < oldest_ns:
                    oldest_ns = request.timings.enqueued_ns
                if total > budget:
                    break  # one past the budget tells the policy the batch is full
            if total > budget:
                break
        if not rows:
            return WAIT_FOR_ARRIVAL
        return decide(rows, (now_ns - oldest_ns) // 1000, self.limits, self._mean_gap_us)

    def _purge_if_dead(self, request: QueuedRequest, now_ns: int) -> bool:
        """Whether a queued request is answered already; one that has expired, or can no longer finish by its
        deadline, gets its DEADLINE_EXCEEDED now. A dead one leaves the live counts (not the deque: the caller
        may be iterating it)."""
        if not request.future.done():
            if request.deadline_ns and now_ns >= request.deadline_ns:
                waited_us = (now_ns - request.timings.enqueued_ns) // 1000
                request.future.set_exception(DeadlineExceeded(self.model, waited_us))
            elif request.finish_by_ns and too_late_to_start(request.finish_by_ns - request.timings.enqueued_ns,
                                                            request.finish_by_ns - now_ns, self._slow_batch_us):
                waited_us = (now_ns - request.timings.enqueued_ns) // 1000
                request.future.set_exception(CannotFinish(self.model, late_start(
                    (request.finish_by_ns - now_ns) // 1000, waited_us, self._slow_batch_us)))
            else:
                return False
        self._forget(request, is_compacting=False)
        return True

    def _pop(self, count: int) -> list[QueuedRequest]:
        batch: list[QueuedRequest] = []
        for queue in self._queues:
            while queue and len(batch) < count:
                request = queue.popleft()  # _popleft, inlined: this runs for every request
                if request.is_queued:
                    request.is_queued = False
                    self._queued -= 1
                    self._requests_by_level[request.level] -= 1
                    self._rows_by_level[request.level] -= request.rows
                    if not request.future.done():
                        batch.append(request)
                else:
                    self._dead_queued -= 1
            if len(batch) == count:
                break
        return batch

    def _arm_timer(self, at_ns: int) -> None:
        if self._timer is not None and self._timer_at_ns <= at_ns:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at_ns = at_ns
        delay_ns = max(at_ns - self._clock_ns(), 0)
        if delay_ns < LOOP_TIMER_MIN_US * 1000 and self._clock_ns is time.monotonic_ns:
            self._timer = PRECISE_TIMER.call_at(at_ns, self._loop, self._on_timer)
        else:
            self._timer = self._loop.call_later(delay_ns / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    # -- execution ------------------------------------------------------------------------

    def _dispatch(self, batch: list[QueuedRequest], rows: int, now_ns: int) -> None:
        assert self._loop is not None
        self._free_instances -= 1
        for request in batch:
            request.timings.dispatched_ns = now_ns
        execution = Execution(batch)
        if self._is_inline:
            self._complete(batch, self._run_batch(batch, rows, execution))
            return
        run = self._loop.run_in_executor(self._executor, self._run_batch, batch, rows, execution)
        self._in_flight[run] = execution
        run.add_done_callback(lambda done: self._finish(batch, done, execution))
        if self._watchdog is not None:
            execution.timer = self._loop.call_later(self._watchdog.timeout_s, self._on_overrun, run, execution)

    def _run_batch(self, batch: list[QueuedRequest], rows: int, execution: Execution) -> BatchRun:
        """In an executor thread: assemble, execute, split. A batch that fails at a row fails only the
        request that sent it and runs once more without it; a failure that names no row is retried
        request by request. Either way each request sees only its own error.

        Requests cancelled or past their deadline since the batch formed are dropped first, not computed."""
        try:
            missing = InferError(f"internal error: model '{self.model}' produced no result for the request")
            run = BatchRun([missing] * len(batch), [])
            now_ns = self._clock_ns()
            pending = []  # indexes into batch still without a result
            for index, request in enumerate(batch):
                if request.future.done():
                    continue  # cancelled: nobody waits for it (_complete skips it)
                if request.deadline_ns and now_ns >= request.deadline_ns:
                    run.results[index] = DeadlineExceeded(self.model, (now_ns - request.timings.enqueued_ns) // 1000)
                    continue
                pending.append(index)
            # Each failure at a row removes one request, so this runs at most once per request.
            while pending and not execution.is_abandoned:  # abandoned: past its timeout, its requests already failed
                part = [batch[i] for i in pending]
                part_rows = rows if len(part) == len(batch) else sum(r.rows for r in part)
                try:
                    results = self._execute_and_split(part, part_rows, execution)
                except Exception as exc:
                    plan = plan_after_failure(self.model, [r.rows for r in part], exc)
                    if plan is None:
                        self._retry_alone(batch, pending, exc, run, execution)
                        return run
                    failed = pending[plan.failed]
                    logger.warning("model '%s': batch of %d requests (%d rows) failed at row %d, in request %d "
                                   "(its row %d); running the other %d again", self.model, len(part), part_rows,
                                   plan.batch_row, plan.failed, plan.error.row, len(plan.rerun))
                    run.results[failed] = plan.error
                    pending = [pending[i] for i in plan.rerun]
                    continue
                for index, result in zip(pending, results):
                    run.results[index] = result
                run.executions.append((part_rows, pending))
                return run
            return run
        finally:
            execution.is_finished = True  # before the loop hears: a watchdog firing now must not abandon it

    def _retry_alone(self, batch: list[QueuedRequest], pending: list[int], exc: Exception, run: BatchRun,
                     execution: Execution) -> None:
        """Runs each pending request on its own after a failure that blames none of them (not after the
        watchdog abandoned the execution: the failure was its interruption, and the hang would run again)."""
        if len(pending) == 1 or execution.is_abandoned:
            run.results[pending[0]] = exc
            return
        logger.warning("model '%s': batch of %d requests failed (%s); retrying one by one",
                       self.model, len(pending), exc)
        for index in pending:
            request = batch[index]
            if execution.is_abandoned:
                return
            try:
                run.results[index] = self._execute_and_split([request], request.rows, execution)[0]
            except Exception as single_exc:
                run.results[index] = single_exc
                continue
            run.executions.append((request.rows, [index]))

    def _execute_and_split(self, batch: list[QueuedRequest], rows: int, execution: Execution) -> list[Tensors]:
        clock_ns = self._clock_ns
        # Each call (a retry too) gets the whole timeout: the watchdog times calls, not the batch's sum of them.
        execution.call_started_ns = time.monotonic_ns()
        transform_start_ns = transform_end_ns = 0
        if self._assemble is not None:
            transform_start_ns = clock_ns()
            assembled = self._assemble([r.inputs for r in batch])
            transform_end_ns = clock_ns()
        elif len(batch) == 1:
            assembled = dict(batch[0].inputs)
        else:
            # The one copy into the batch buffer.
            names = batch[0].inputs.keys()
            assembled = {name: np.concatenate([r.inputs[name] for r in batch]) for name in names}
        compute_start_ns = clock_ns()
        outputs = self._execute(assembled, execution)
        compute_end_ns = clock_ns()
        if self.limits.max_batch_size == 0:
            # A model that does not batch: one request, outputs returned whole.
            timings = batch[0].timings
            timings.compute_start_ns, timings.compute_end_ns, timings.batch_rows = compute_start_ns, compute_end_ns, 1
            timings.transform_start_ns, timings.transform_end_ns = transform_start_ns, transform_end_ns
            timings.done_ns = compute_end_ns
            return [dict(outputs)]
        results: list[Tensors] = []
        offset = 0
        for request in batch:
            end = offset + request.rows
            # Views into the batch output; the server copies them once into the response.
            results.append({name: value[offset:end] for name, value in outputs.items()})
            offset = end
            timings = request.timings
            timings.transform_start_ns, timings.transform_end_ns = transform_start_ns, transform_end_ns
            timings.compute_start_ns = compute_start_ns
            timings.compute_end_ns = compute_end_ns
            timings.batch_rows = rows
        if offset != rows or any(len(v) != rows for v in outputs.values()):
            raise InferError(
                f"model '{self.model}' returned outputs of {[len(v) for v in outputs.values()]} rows "
                f"for a batch of {rows} rows"
            )
        done_ns = clock_ns()
        for request in batch:
            request.timings.done_ns = done_ns
        return results

    def _on_overrun(self, run: asyncio.Future[BatchRun], execution: Execution) -> None:
        """On the loop, when an execution's runtime call outlives the watchdog's timeout: fail its requests, tell
        the runtime to stop it, and put a fresh instance in its place so the queue behind it moves on."""
        execution.timer = None
        if run.done() or execution.is_finished:
            return  # it ended while this timer was due; _finish has it
        watchdog = self._watchdog
        assert watchdog is not None and self._loop is not None
        left_s = watchdog.timeout_s - (time.monotonic_ns() - execution.call_started_ns) / 1e9
        if execution.call_started_ns and left_s > 0:
            # A retry (after a failed row, or one by one) began since: it gets its own full timeout.
            execution.timer = self._loop.call_later(left_s, self._on_overrun, run, execution)
            return
        self._abandon(run, execution, ExecutionTimeout(self.model, watchdog.timeout_s, len(execution.batch)))
        self.replaced_instances += 1
        logger.error("model '%s': an execution of %d requests ran past its %g s timeout; %s, and a new instance "
                     "takes its place (%d replaced since load)", self.model, len(execution.batch),
                     watchdog.timeout_s, "the runtime was told to stop it" if watchdog.is_interruptible
                     else "its thread is left to finish", self.replaced_instances)
        # A fresh executor for later batches: the hung thread may never return to this one's pool.
        old, self._executor = self._executor, watchdog.new_executor()
        old.shutdown(wait=False)
        self._free_instances += 1
        if not self.is_healthy:
            self._fail_all(self._hung_error())
            self._tell_health()
        self._schedule()

    def _abandon(self, run: asyncio.Future[BatchRun], execution: Execution, error: InferError) -> None:
        """Gives up on a running execution: its requests get `error` now, its runtime call is told to stop, and
        it counts as hung until its thread returns (_finish)."""
        execution.is_abandoned = True
        del self._in_flight[run]
        if execution.timer is not None:
            execution.timer.cancel()
        for request in execution.batch:
            if not request.future.done():
                request.future.set_exception(error)
        execution.stop()
        self.hung_executions += 1

    def _tell_health(self) -> None:
        if self.on_health_change is not None:
            self.on_health_change()

    @property
    def is_healthy(self) -> bool:
        """False while so many executions past their timeout still run that requests are refused."""
        return self.hung_executions < MAX_HUNG_PER_INSTANCE * self._instances

    def _hung_error(self) -> ModelUnavailable:
        return ModelUnavailable(self.model, "", f"{self.hung_executions} executions past the execution timeout are "
                                "still running; it serves again once they end, or reload the model")

    @property
    def executor(self) -> Executor:
        """Where batches run now (a replaced instance's executor is shut down and left behind)."""
        return self._executor

    def _finish(self, batch: list[QueuedRequest], run: asyncio.Future[BatchRun], execution: Execution) -> None:
        if execution.is_abandoned:
            # Its requests were failed at the timeout and its instance replaced; what it produced is dropped.
            was_healthy = self.is_healthy
            self.hung_executions -= 1
            logger.warning("model '%s': an execution given up on (past its timeout, or after the drain) ended",
                           self.model)
            if self.is_healthy != was_healthy:
                self._tell_health()
            return
        if execution.timer is not None:
            execution.timer.cancel()
        del self._in_flight[run]
        if run.cancelled():
            self._complete(batch, BatchRun([InferError("batch execution was cancelled")] * len(batch), []))
        elif run.exception() is not None:
            logger.error("model '%s': running a batch of %d requests failed", self.model, len(batch),
                         exc_info=run.exception())
            # Not the exception's text: it may come from any request of the batch.
            error = InferError(f"internal error while running a batch of model '{self.model}'")
            self._complete(batch, BatchRun([error] * len(batch), []))
        else:
            self._complete(batch, run.result())
        self._schedule()

    def _complete(self, batch: list[QueuedRequest], run: BatchRun) -> None:
        """Frees the instance, hands each request its result, and records each execution that produced outputs."""
        self._free_instances += 1
        if run.executions and batch:
            batch_us = (self._clock_ns() - batch[0].timings.dispatched_ns) / 1000
            self._mean_batch_us, self._batch_deviation_us = smoothed_batch_us(self._mean_batch_us,
                                                                              self._batch_deviation_us, batch_us)
        delivered = set()
        for index, (request, result) in enumerate(zip(batch, run.results)):
            if request.future.done():
                continue
            if isinstance(result, Exception):
                request.future.set_exception(_as_infer_error(self.model, result))
            else:
                request.future.set_result(result)
                delivered.add(index)
        for execution_rows, indexes in run.executions:
            succeeded = [batch[i] for i in indexes if i in delivered]
            if len(succeeded) != len(indexes):
                self._stats.computed_unanswered(sum(batch[i].rows for i in indexes if i not in delivered))
            if succeeded:
                self._stats.batch_done(execution_rows, succeeded)

    # -- lifecycle --------------------------------------------------------------------------

    async def stop(self, drain_timeout_s: float) -> None:
        """Stops accepting, lets queued and running batches finish within the timeout, then fails whatever is
        left with UNAVAILABLE; executions still running are told to stop (they count as hung until they do)."""
        self._is_accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while (self._queued or self._in_flight) and time.monotonic() < deadline:
            waiters = list(self._in_flight) or [asyncio.ensure_future(asyncio.sleep(0.01))]
            await asyncio.wait(waiters, timeout=max(deadline - time.monotonic(), 0))
        error = ModelUnavailable(self.model, "", "the server is shutting down")
        for run, execution in list(self._in_flight.items()):
            logger.warning("model '%s': an execution of %d requests still runs after the %g s drain; its requests "
                           "fail and it is told to stop", self.model, len(execution.batch), drain_timeout_s)
            self._abandon(run, execution, error)
        self._fail_all(error)
        for timer in (self._timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()

    def _fail_all(self, error: InferError) -> None:
        for queue in self._queues:
            while queue:
                request = queue.popleft()
                request.is_queued = False
                if not request.future.done():
                    request.future.set_exception(error)
        self._queued = self._dead_queued = 0
        self._requests_by_level = [0] * len(self._queues)
        self._rows_by_level = [0] * len(self._queues)
        self._expiries.clear()


def _as_infer_error(model: str, exc: BaseException) -> InferError:
    """What the client sees of a failure: an InferError as it is; anything else, which may carry another
    request's data or the server's internals, as INTERNAL with an id that finds the details in the log."""
    if isinstance(exc, InferError):
        return exc
    error_id = uuid.uuid4().hex[:12]
    logger.error("model '%s' failed to execute (error id %s): %s: %s", model, error_id, type(exc).__name__, exc)
    return InferError(f"model '{model}' failed to execute (error id {error_id}); the server log has the details")
