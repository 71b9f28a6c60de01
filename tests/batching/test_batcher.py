"""DynamicBatcher plumbing with a gated fake model: ordering, priorities, limits, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from infergate.batching.batcher import DynamicBatcher
from infergate.batching.policy import BatchLimits, QueuePolicy
from infergate.batching.stats import ModelStats
from infergate.models.errors import DeadlineExceeded, InferError, InvalidInput, ModelUnavailable, QueueFull, Status
from infergate.models.runtime import StopToken


class GatedModel:
    """Doubles its input; each execution waits for the gate, and records its batch."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[float]] = []
        self.started = threading.Semaphore(0)

    def __call__(self, inputs: dict[str, np.ndarray], stop: StopToken | None = None) -> Mapping[str, np.ndarray]:
        self.started.release()
        self.gate.wait(10)
        x = inputs["X"]
        self.batches.append(x[:, 0].tolist())
        if np.isnan(x).any():
            raise ValueError("NaN in batch")
        return {"Y": x * 2}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"X": np.array([[v] for v in values], np.float32)}


async def _started(model: GatedModel) -> None:
    await asyncio.to_thread(model.started.acquire, True, 10)


@pytest.fixture()
def executor() -> ThreadPoolExecutor:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def test_batches_form_while_the_instance_is_busy(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        stats = ModelStats()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, executor, stats=stats)
        model.gate.clear()
        first = batcher.submit(rows(1), 1)
        await _started(model)  # first runs alone, blocking the only instance
        others = [batcher.submit(rows(v), 1) for v in (2, 3, 4, 5, 6)]
        model.gate.set()
        results = await asyncio.gather(first, *others)
        assert [r["Y"][0, 0] for r in results] == [2, 4, 6, 8, 10, 12]
        assert model.batches == [[1], [2, 3, 4, 5], [6]]
        assert (stats.execution_count, stats.inference_count) == (3, 6)
        assert sorted(stats.batches) == [1, 4]

    asyncio.run(run())


def test_multi_row_requests_are_split_back_exactly(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=8), model, executor)
        model.gate.clear()
        blocker = batcher.submit(rows(0), 1)
        await _started(model)
        a, b, c = batcher.submit(rows(1, 2, 3), 3), batcher.submit(rows(4), 1), batcher.submit(rows(5, 6), 2)
        model.gate.set()
        await blocker
        assert [r["Y"][:, 0].tolist() for r in await asyncio.gather(a, b, c)] == [[2, 4, 6], [8], [10, 12]]
        assert model.batches[1] == [1, 2, 3, 4, 5, 6]

    asyncio.run(run())


def test_higher_priority_goes_first(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        limits = BatchLimits(max_batch_size=1, priority_levels=3, default_priority_level=2)
        batcher = DynamicBatcher("m", limits, model, executor)
        model.gate.clear()
        futures = [batcher.submit(rows(0), 1)]
        await _started(model)
        futures += [batcher.submit(rows(v), 1, priority=p) for v, p in ((1, 3), (2, 0), (3, 1), (4, 2), (5, 1))]
        model.gate.set()
        await asyncio.gather(*futures)
        assert model.batches == [[0], [3], [5], [2], [4], [1]]

    asyncio.run(run())


def test_queue_limit_and_priority_range(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        limits = BatchLimits(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2))
        batcher = DynamicBatcher("m", limits, model, executor)
        model.gate.clear()
        running = batcher.submit(rows(0), 1)
        await _started(model)
        queued = [batcher.submit(rows(1), 1), batcher.submit(rows(2), 1)]
        with pytest.raises(QueueFull, match="model 'm' queue is full: 2 requests already waiting"):
            batcher.submit(rows(3), 1)
        with pytest.raises(InvalidInput, match=r"parameter 'priority' is 2, expected 0 \(default\) or 1..1"):
            batcher.submit(rows(3), 1, priority=2)
        model.gate.set()
        await asyncio.gather(running, *queued)

    asyncio.run(run())


def test_a_burst_at_an_idle_model_counts_only_what_must_wait(executor: ThreadPoolExecutor) -> None:
    """Arrivals in one loop turn are decided together: those a free instance takes are not 'waiting'."""
    async def run() -> None:
        model = GatedModel()
        limits = BatchLimits(max_batch_size=1, default_queue_policy=QueuePolicy(max_queue_size=2))
        batcher = DynamicBatcher("m", limits, model, executor, instance_count=2)
        model.gate.clear()
        burst = [batcher.submit(rows(i), 1) for i in range(4)]  # two start at once, two wait
        with pytest.raises(QueueFull, match="2 requests already waiting"):
            batcher.submit(rows(9), 1)
        model.gate.set()
        assert [r["Y"][0, 0] for r in await asyncio.gather(*burst)] == [0.0, 2.0, 4.0, 6.0]

    asyncio.run(run())


def test_cancelled_and_expired_requests_are_never_run(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, executor)
        model.gate.clear()
        running = batcher.submit(rows(0), 1)
        await _started(model)
        cancelled = batcher.submit(rows(1), 1)
        expired = batcher.submit(rows(2), 1, timeout_us=1)
        kept = batcher.submit(rows(3), 1)
        cancelled.cancel()
        await asyncio.sleep(0.001)
        model.gate.set()
        await running
        assert (await kept)["Y"][0, 0] == 6
        with pytest.raises(DeadlineExceeded, match=r"request to model 'm' timed out after \d+ us in the queue"):
            await expired
        assert model.batches == [[0], [3]]

    asyncio.run(run())


def test_a_failing_request_does_not_fail_its_batch(executor: ThreadPoolExecutor,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4), model, executor)
        model.gate.clear()
        blocker = batcher.submit(rows(0), 1)
        await _started(model)
        good, bad, good2 = batcher.submit(rows(1), 1), batcher.submit(rows(float("nan")), 1), batcher.submit(rows(2), 1)
        model.gate.set()
        await blocker
        assert (await good)["Y"][0, 0] == 2 and (await good2)["Y"][0, 0] == 4
        # Not the exception's text, which may hold another request's data: INTERNAL with an id the log shows.
        with pytest.raises(InferError, match=r"model 'm' failed to execute \(error id (\w{12})\); the server log "
                           "has the details") as raised:
            await bad
        assert raised.value.status is Status.INTERNAL
        error_id = raised.value.message.split("error id ")[1][:12]
        assert f"model 'm' failed to execute (error id {error_id}): ValueError: NaN in batch" in caplog.text

    asyncio.run(run())


def test_stop_drains_then_refuses(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=2), model, executor)
        pending = [batcher.submit(rows(v), 1) for v in (1, 2, 3)]
        await batcher.stop(drain_timeout_s=5)
        assert [r["Y"][0, 0] for r in await asyncio.gather(*pending)] == [2, 4, 6]
        with pytest.raises(ModelUnavailable, match="is being unloaded or the server is shutting down"):
            batcher.submit(rows(4), 1)

    asyncio.run(run())


def test_stop_fails_what_cannot_drain_in_time(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=1), model, executor)
        model.gate.clear()
        running = batcher.submit(rows(1), 1)
        await _started(model)
        waiting = batcher.submit(rows(2), 1)
        await batcher.stop(drain_timeout_s=0.05)
        # Both answered at the drain's end: the queued one, and the running one whose thread goes on.
        for future in (waiting, running):
            assert future.done()
            with pytest.raises(ModelUnavailable, match="the server is shutting down"):
                await future
        assert batcher.hung_executions == 1
        model.gate.set()
        await asyncio.sleep(0.05)
        assert batcher.hung_executions == 0  # its thread returned; what it computed is dropped

    asyncio.run(run())


def test_short_delays_use_the_precise_timer(executor: ThreadPoolExecutor) -> None:
    """A partial batch goes when the delay expires, not at the next millisecond tick (checked by
    the count of executions, not by timing)."""
    async def run() -> None:
        model = GatedModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=8, max_queue_delay_us=300), model, executor)
        first = batcher.submit(rows(1), 1)
        second = batcher.submit(rows(2), 1)
        await asyncio.gather(first, second)
        assert model.batches == [[1, 2]]

    asyncio.run(run())


def test_precise_timer_orders_and_cancels() -> None:
    import time

    from infergate.batching.timer import PreciseTimer

    async def run() -> list[str]:
        timer, fired, loop = PreciseTimer(), [], asyncio.get_running_loop()
        done = loop.create_future()
        now = time.monotonic_ns()
        # Wide gaps: the timer's thread fires on its own, and a loaded host can stall this thread for ms.
        timer.call_at(now + 200_000_000, loop, lambda: (fired.append("late"), done.set_result(None)))
        timer.call_at(now + 20_000_000, loop, lambda: fired.append("early"))
        timer.call_at(now + 100_000_000, loop, lambda: fired.append("cancelled")).cancel()
        await done
        return fired

    assert asyncio.run(run()) == ["early", "late"]


def test_inline_execution_runs_on_the_loop_and_splits_exactly(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        stats = ModelStats()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=4, max_queue_delay_us=100), model, executor,
                                 stats=stats, is_inline=True)
        futures = [batcher.submit(rows(*range(i, i + 1 + i % 2)), 1 + i % 2) for i in range(6)]
        results = await asyncio.gather(*futures)
        for i, result in enumerate(results):
            assert result["Y"][:, 0].tolist() == [2 * v for v in range(i, i + 1 + i % 2)]
        assert stats.inference_count == 9 and stats.execution_count == len(model.batches) < 6
        bad = batcher.submit(rows(float("nan")), 1)
        with pytest.raises(InferError, match=r"model .m. failed to execute \(error id \w{12}\)"):
            await bad

    asyncio.run(run())


def test_adaptive_delay_serves_a_lone_client_at_once_and_batches_a_burst(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = GatedModel()
        now_ns = [1_000_000_000]
        limits = BatchLimits(max_batch_size=8, max_queue_delay_us=1000)
        batcher = DynamicBatcher("m", limits, model, executor, clock_ns=lambda: now_ns[0])
        # One closed-loop client whose round trip (200 us) is shorter than the delay: each request
        # arrives at an idle model and goes at once. (The fake clock stands still while a request
        # waits, so a request held for company would never finish.)
        for value in range(1, 21):
            now_ns[0] += 200_000
            result = await asyncio.wait_for(batcher.submit(rows(value), 1), 5)
            assert result["Y"][0, 0] == value * 2
        assert model.batches == [[v] for v in range(1, 21)]
        model.batches.clear()
        burst = []
        for _ in range(24):  # a burst, 1 us apart, finds the model busy: three full batches
            now_ns[0] += 1_000
            burst.append(batcher.submit(rows(0), 1))
        await asyncio.wait_for(asyncio.gather(*burst), 5)
        assert model.batches == [[0] * 8] * 3
        model.batches.clear()
        # Right after the burst the mean gap is short, so a lone request waits for company ...
        pending = batcher.submit(rows(9), 1)
        await asyncio.sleep(0.05)
        assert not pending.done() and model.batches == []
        full = [batcher.submit(rows(v), 1) for v in range(7)]  # ... which fills its batch
        await asyncio.wait_for(asyncio.gather(pending, *full), 5)
        assert model.batches == [[9, 0, 1, 2, 3, 4, 5, 6]]

    asyncio.run(run())
