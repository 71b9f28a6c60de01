"""Overload and hangs at the batcher: admission by deadline, places freed by cancelling, formed batches that drop
the requests nobody waits for, and the watchdog of --model-execution-timeout-s."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from infergate.batching.admission import (
    Backlog,
    finish_us,
    refusal,
    smoothed_batch_us,
    too_late_to_start,
)
from infergate.batching.batcher import DynamicBatcher, Watchdog
from infergate.batching.policy import BatchLimits, QueuePolicy
from infergate.models.errors import CannotFinish, DeadlineExceeded, ExecutionTimeout, ModelUnavailable, QueueFull
from infergate.models.runtime import ExecutionStopped, StopToken


class Model:
    """Doubles its input, records each batch's first column; a row of value HANG blocks until released, or (when
    interruptible, as ONNX Runtime is) until its execution is told to stop."""

    HANG = -1.0

    def __init__(self, batch_s: float = 0.0, is_interruptible: bool = True) -> None:
        self.batch_s = batch_s
        self.is_interruptible = is_interruptible
        self.batches: list[list[float]] = []
        self.release = threading.Event()
        self.stops = 0

    def __call__(self, inputs: dict[str, np.ndarray], stop: StopToken | None = None) -> Mapping[str, np.ndarray]:
        x = inputs["X"]
        self.batches.append(x[:, 0].tolist())
        if (x == self.HANG).any():
            if stop is not None and self.is_interruptible:
                stop.bind(self._stopped)
            self.release.wait(10)
            raise RuntimeError("stopped")
        time.sleep(self.batch_s)
        return {"Y": x * 2}

    def _stopped(self) -> None:
        self.stops += 1
        self.release.set()


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"X": np.array([[v] for v in values], np.float32)}


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


# -- the decision ---------------------------------------------------------------------------


def test_the_estimate_is_full_batches_on_every_instance_at_once() -> None:
    backlog = Backlog(requests_ahead=10, rows_ahead=30, max_rows=8, instances=2, batch_us=1000.0)
    assert finish_us(backlog, 2) == (1000, 2000)  # 32 rows: 4 batches, 2 waves
    assert finish_us(backlog, 3) == (2000, 3000)  # 33 rows: 5 batches, 3 waves
    assert finish_us(Backlog(0, 0, 8, 1, 1000.0), 1) == (0, 1000)  # alone: its own batch
    assert finish_us(Backlog(5, 5, 8, 1, 0.0), 1) == (0, 0)  # not measured yet: admitted


def test_a_request_is_refused_only_when_even_the_estimate_misses_its_deadline() -> None:
    backlog = Backlog(requests_ahead=3, rows_ahead=24, max_rows=8, instances=1, batch_us=1000.0)
    assert refusal(backlog, 8, deadline_left_us=4000, queue_timeout_us=None) == ""
    reason = refusal(backlog, 8, deadline_left_us=3999, queue_timeout_us=None)
    assert reason == ("cannot be run before its deadline: 3999 us left, and the 3 requests (24 rows) queued ahead "
                      "of it need at least 4000 us at 1000 us per batch of up to 8 rows on 1 instance(s); refused "
                      "without queueing, retry with a longer deadline or on another server")
    # The queue timeout bounds the wait before the batch starts, not its compute.
    assert refusal(backlog, 8, deadline_left_us=None, queue_timeout_us=3000) == ""
    assert "its queue timeout of 2999 us" in refusal(backlog, 8, deadline_left_us=None, queue_timeout_us=2999)
    assert refusal(backlog, 8, None, None) == ""


def test_a_request_with_nothing_queued_ahead_is_always_admitted() -> None:
    # A mean inflated by one slow batch must not refuse an idle model's short-deadline traffic for good.
    assert refusal(Backlog(0, 0, 8, 1, 275_000.0), 1, deadline_left_us=200_000, queue_timeout_us=1000) == ""


def test_after_one_slow_batch_an_idle_model_still_serves_short_deadlines(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model(batch_s=0.3)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        await batcher.submit(rows(0), 1)  # the mean is now about 300 ms
        model.batch_s = 0.0
        for value in (1, 2, 3):  # each with a deadline far below the mean, at an idle model
            outputs = await batcher.submit(rows(value), 1, deadline_ns=time.monotonic_ns() + 100_000_000)
            assert outputs["Y"][0, 0] == 2 * value

    asyncio.run(run())


def test_the_mean_batch_time_starts_at_the_first_batch_and_follows_slowly() -> None:
    assert smoothed_batch_us(0.0, 0.0, 800.0) == (800.0, 400.0)  # the first batch: its deviation unsure
    assert smoothed_batch_us(800.0, 400.0, 1600.0) == (900.0, 500.0)


# -- the batcher ----------------------------------------------------------------------------


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model(batch_s=0.02)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        await batcher.submit(rows(0), 1)  # measures the batch time: about 20 ms
        queued = [batcher.submit(rows(i), 1) for i in range(1, 6)]
        await asyncio.sleep(0)
        # Five batches ahead, at least 20 ms each: 50 ms is not enough, and it is said at once.
        started = time.monotonic()
        with pytest.raises(CannotFinish, match=r"request to model 'm' cannot be run before its deadline: \d+ us "
                           r"left, and the \d requests \(\d rows\) queued ahead of it need at least \d+ us"):
            batcher.submit(rows(9), 1, deadline_ns=time.monotonic_ns() + 50_000_000)
        assert time.monotonic() - started < 0.01
        ok = batcher.submit(rows(7), 1, deadline_ns=time.monotonic_ns() + 5_000_000_000)  # enough time: admitted
        await asyncio.gather(*queued, ok)
        assert 9.0 not in [v for batch in model.batches for v in batch]

    asyncio.run(run())


def test_a_cancelled_request_frees_its_place_in_a_full_queue_at_once(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model()
        limits = BatchLimits(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2))
        batcher = DynamicBatcher("m", limits, model, executor)
        hung = batcher.submit(rows(Model.HANG), 1)
        await asyncio.sleep(0.01)
        # As the server waits for outputs: a call that gives up (cancelled) cancels its wait in outputs().
        first = asyncio.ensure_future(batcher.outputs(batcher.enqueue(rows(1), 1)))
        second = batcher.submit(rows(2), 1)
        with pytest.raises(QueueFull, match=r"2 requests already waiting \(dynamic_batching\.default_queue_policy"):
            batcher.submit(rows(3), 1)
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert batcher.queued == 1
        third = batcher.submit(rows(3), 1)  # the cancelled one's place, not after it reaches the head
        model.release.set()
        await asyncio.gather(hung, return_exceptions=True)
        assert (await second)["Y"][0, 0] == 4 and (await third)["Y"][0, 0] == 6
        assert 1.0 not in [v for batch in model.batches for v in batch]

    asyncio.run(run())


def test_a_formed_batch_drops_what_was_cancelled_or_expired_before_it_started() -> None:
    async def run() -> None:
        model = Model()
        with ThreadPoolExecutor(1) as pool:
            # The executor's one thread is busy, so the formed batch waits there before it starts.
            gate = threading.Event()
            pool.submit(gate.wait, 10)
            batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, pool)
            cancelled = batcher.submit(rows(1), 1)
            expiring = batcher.submit(rows(2), 1, deadline_ns=time.monotonic_ns() + 30_000_000)
            kept = batcher.submit(rows(3), 1)
            await asyncio.sleep(0.01)  # the batch of three is formed and handed to the executor
            assert batcher.queued == 0
            cancelled.cancel()
            await asyncio.sleep(0.05)  # past the second one's deadline
            gate.set()
            assert (await kept)["Y"][0, 0] == 6
            with pytest.raises(DeadlineExceeded, match="before it was run"):
                await expiring
        assert model.batches == [[3.0]]

    asyncio.run(run())


class Executors:
    """The executors a watched batcher asks for: its first, then one per replaced instance."""

    def __init__(self) -> None:
        self.made: list[ThreadPoolExecutor] = []

    def __call__(self) -> ThreadPoolExecutor:
        self.made.append(ThreadPoolExecutor(1))
        return self.made[-1]


@pytest.fixture()
def new_executor() -> Iterator[Executors]:
    executors = Executors()
    yield executors
    for pool in executors.made:
        pool.shutdown()


def test_a_hung_execution_fails_its_requests_in_time_and_a_new_instance_serves(
        caplog: pytest.LogCaptureFixture, new_executor: Executors) -> None:
    async def run() -> None:
        model = Model()
        watchdog = Watchdog(0.2, new_executor, is_interruptible=True)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, new_executor(), watchdog=watchdog)
        started = time.monotonic()
        hung, neighbour = batcher.submit(rows(Model.HANG), 1), batcher.submit(rows(5), 1)
        behind = None
        await asyncio.sleep(0.05)
        behind = batcher.submit(rows(6), 1)  # queued behind the hung execution
        for future in (hung, neighbour):
            with pytest.raises(ExecutionTimeout, match=r"model 'm' execution ran past its limit of 0.2 s "
                               r"\(--model-execution-timeout-s, or the model's parameter model_execution_timeout_s\)"
                               r"; the batch of 2 request\(s\) failed and the instance was replaced"):
                await future
        assert 0.2 <= time.monotonic() - started < 1.0
        assert (await behind)["Y"][0, 0] == 12  # on the new instance
        assert model.stops == 1 and batcher.replaced_instances == 1 and len(new_executor.made) == 2
        assert (await batcher.submit(rows(7), 1))["Y"][0, 0] == 14
        await asyncio.sleep(0.05)
        assert batcher.hung_executions == 0  # the interrupted run ended
        assert "ran past its 0.2 s timeout; the runtime was told to stop it" in caplog.text

    asyncio.run(run())


def test_a_model_whose_runs_stay_hung_refuses_instead_of_leaking_threads(new_executor: Executors) -> None:
    async def run() -> None:
        model = Model(is_interruptible=False)
        # No interrupt: each hung run keeps its thread, as a TorchScript model's would.
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, new_executor(),
                                 watchdog=Watchdog(0.05, new_executor))
        for _ in range(2):
            with pytest.raises(ExecutionTimeout):
                await batcher.submit(rows(Model.HANG), 1)
        with pytest.raises(ModelUnavailable, match="2 executions past the execution timeout are still running; it "
                           "serves again once they end, or reload the model"):
            batcher.submit(rows(1), 1)
        model.release.set()
        await asyncio.sleep(0.1)
        assert batcher.hung_executions == 0
        assert (await batcher.submit(rows(1), 1))["Y"][0, 0] == 2

    asyncio.run(run())


def test_rows_computed_for_a_request_cancelled_while_it_ran_are_counted(executor: ThreadPoolExecutor) -> None:
    from infergate.batching.stats import ModelStats

    async def run() -> ModelStats:
        model, stats = Model(batch_s=0.05), ModelStats()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, executor, stats=stats)
        kept, cancelled = batcher.submit(rows(1), 1), batcher.submit(rows(2, 3), 2)
        await asyncio.sleep(0.02)  # both are in the running batch
        cancelled.cancel()
        assert (await kept)["Y"][0, 0] == 2
        return stats

    stats = asyncio.run(run())
    assert (stats.computed_unanswered_rows, stats.inference_count, stats.success.count) == (2, 3, 0)


# -- review of the overload paths: expiry while busy, O(1) forgetting, per-call timeouts, late reports ----------


def test_queue_timeouts_expire_on_time_while_every_instance_is_busy(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model()
        limits = BatchLimits(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2,
                                                                                default_timeout_us=50_000))
        batcher = DynamicBatcher("m", limits, model, executor)
        hung = batcher.submit(rows(Model.HANG), 1)
        await asyncio.sleep(0.01)  # its batch holds the one instance: no decision runs until it ends
        started = time.monotonic()
        waiting = [batcher.submit(rows(1), 1), batcher.submit(rows(2), 1)]
        for future in waiting:
            with pytest.raises(DeadlineExceeded, match="timed out after"):
                await future
        assert time.monotonic() - started < 0.5  # at the timeout, not when the instance frees (10 s)
        assert batcher.queued == 0
        late = batcher.submit(rows(3), 1)  # the expired ones no longer fill the queue
        model.release.set()
        await asyncio.gather(hung, return_exceptions=True)
        assert (await late)["Y"][0, 0] == 6

    asyncio.run(run())


def test_callers_that_give_up_leave_the_counts_at_once_and_the_queue_is_compacted(
        executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model(batch_s=0.01)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        await batcher.submit(rows(0), 1)  # measures the batch time: about 10 ms
        hung = batcher.submit(rows(Model.HANG), 1)
        await asyncio.sleep(0.01)
        callers = [asyncio.ensure_future(batcher.outputs(batcher.enqueue(rows(i), 1))) for i in range(1, 201)]
        await asyncio.sleep(0)
        for caller in callers[:199]:
            caller.cancel()
        await asyncio.gather(*callers[:199], return_exceptions=True)
        assert batcher.queued == 1
        assert sum(len(q) for q in batcher._queues) <= 2  # the dead were dropped, not kept until they reach the head
        # Admission counts only the live one ahead: 2 batches of ~10 ms fit in 100 ms.
        admitted = batcher.submit(rows(300), 1, deadline_ns=time.monotonic_ns() + 100_000_000)
        model.release.set()
        await asyncio.gather(hung, return_exceptions=True)
        assert (await callers[199])["Y"][0, 0] == 400 and (await admitted)["Y"][0, 0] == 600
        assert not {float(i) for i in range(1, 200)} & {v for batch in model.batches for v in batch}

    asyncio.run(run())


class FailsThenSlow:
    """A model whose every call takes `call_s`; a batch of more than one request fails without naming a row, so
    the batcher retries each request alone."""

    def __init__(self, call_s: float) -> None:
        self.call_s = call_s
        self.calls = 0

    def __call__(self, inputs: dict[str, np.ndarray], stop: StopToken | None = None) -> Mapping[str, np.ndarray]:
        self.calls += 1
        time.sleep(self.call_s)
        if len(inputs["X"]) > 1:
            raise RuntimeError("a failure that blames no row")
        return {"Y": inputs["X"] * 2}


def test_the_watchdog_times_each_call_so_retries_do_not_trip_it(new_executor: Executors) -> None:
    async def run() -> None:
        model = FailsThenSlow(call_s=0.15)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4, max_queue_delay_us=20_000), model,
                                 new_executor(), watchdog=Watchdog(0.25, new_executor))
        first, second = batcher.submit(rows(1), 1), batcher.submit(rows(2), 1)
        # Three calls of 0.15 s, 0.45 s in all: each within the 0.25 s timeout.
        assert (await first)["Y"][0, 0] == 2 and (await second)["Y"][0, 0] == 4
        assert model.calls == 3 and batcher.replaced_instances == 0

    asyncio.run(run())


class LateReporter(ThreadPoolExecutor):
    """An executor slow to report a finished call (a GIL-starved hand-over): each result comes `delay_s` after
    the call returned."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(1)
        self.delay_s = delay_s

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        def late():  # type: ignore[no-untyped-def]
            result = fn(*args, **kwargs)
            time.sleep(self.delay_s)
            return result

        return super().submit(late)


def test_a_run_that_finished_before_the_watchdog_fired_is_not_abandoned() -> None:
    async def run() -> None:
        executor = LateReporter(delay_s=0.3)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), Model(), executor,
                                 watchdog=Watchdog(0.1, lambda: ThreadPoolExecutor(1)))
        assert (await batcher.submit(rows(4), 1))["Y"][0, 0] == 8  # done in time, heard of late
        assert batcher.replaced_instances == 0 and batcher.hung_executions == 0
        executor.shutdown()

    asyncio.run(run())


def test_stop_tells_a_running_execution_to_stop_and_fails_its_requests(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        hung = batcher.submit(rows(Model.HANG), 1)
        await asyncio.sleep(0.05)
        await batcher.stop(drain_timeout_s=0.05)
        with pytest.raises(ModelUnavailable, match="the server is shutting down"):
            await hung
        assert model.stops == 1  # an interruptible runtime ends the call: its thread returns
        await asyncio.sleep(0.05)
        assert batcher.hung_executions == 0

    asyncio.run(run())


def test_a_stop_token_is_never_lost_whichever_side_comes_first() -> None:
    stopped: list[str] = []
    late = StopToken()
    late.bind(lambda: stopped.append("call"))  # the call is running: stop reaches it
    late.stop()
    assert stopped == ["call"]
    early = StopToken()
    early.stop()  # before the runtime's call began: the call never starts
    with pytest.raises(ExecutionStopped, match="stopped before it began"):
        early.bind(lambda: stopped.append("never"))
    assert stopped == ["call"] and early.is_stopped


def test_a_request_is_dropped_before_its_batch_when_too_little_of_its_deadline_is_left() -> None:
    assert too_late_to_start(given_ns=90_000_000, left_ns=40_000_000, batch_us=57_000.0)
    assert not too_late_to_start(given_ns=90_000_000, left_ns=60_000_000, batch_us=57_000.0)
    # A deadline that was always shorter than a batch is run: its batch brings an inflated mean back down.
    assert not too_late_to_start(given_ns=30_000_000, left_ns=1_000_000, batch_us=57_000.0)
    assert not too_late_to_start(given_ns=90_000_000, left_ns=1, batch_us=0.0)  # not measured yet
    assert smoothed_batch_us(800.0, 400.0, 1000.0) == (825.0, 350.0)


def test_a_queued_request_that_can_no_longer_finish_in_time_is_not_computed(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = Model(batch_s=0.05)
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        for value in range(8):  # the mean settles at ~50 ms and its deviation shrinks
            await batcher.submit(rows(value), 1)
        running = batcher.submit(rows(10), 1)
        await asyncio.sleep(0.005)  # its batch has started
        # Admitted (nothing queued ahead), but after the running batch 40 ms are left: less than a batch.
        late = batcher.submit(rows(11), 1, deadline_ns=time.monotonic_ns() + 90_000_000)
        with pytest.raises(CannotFinish, match=r"request to model 'm' cannot finish before its deadline: \d+ us "
                           r"left after \d+ us in the queue, and a batch takes \d+ us; dropped uncomputed"):
            await late
        await running
        # A deadline shorter than a batch from the start still runs, at an idle model.
        assert (await batcher.submit(rows(12), 1, deadline_ns=time.monotonic_ns() + 30_000_000))["Y"][0, 0] == 24
        assert 11.0 not in [v for batch in model.batches for v in batch]

    asyncio.run(run())
