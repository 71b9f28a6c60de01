"""End to end: queue limits, timeouts, deadlines and cancellation, on a deliberately slow model."""

from __future__ import annotations

import asyncio

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

# The `slow` test model: max_batch_size 1, one instance, max_queue_size 2, ~40 ms per request.
X = np.zeros((1, 256), np.float32)


def _tensor() -> aioclient.InferInput:
    tensor = aioclient.InferInput("INPUT0", [1, 256], "FP32")
    tensor.set_data_from_numpy(X)
    return tensor


async def _outcomes(url: str, count: int, **kwargs: object) -> list[str]:
    async with aioclient.InferenceServerClient(url) as client:
        async def one() -> str:
            try:
                await client.infer("slow", [_tensor()], **kwargs)
                return "OK"
            except InferenceServerException as exc:
                return f"{exc.status()}: {exc.message()}"

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def _executions(url: str) -> int:
    async with aioclient.InferenceServerClient(url) as client:
        return int((await client.get_inference_statistics("slow")).model_stats[0].execution_count)


def test_full_queue_is_resource_exhausted(url: str) -> None:
    outcomes = asyncio.run(_outcomes(url, 8))
    rejected = [o for o in outcomes if o != "OK"]
    # One runs, two wait; everything beyond is refused at once.
    assert outcomes.count("OK") >= 3
    assert len(rejected) >= 3
    assert set(rejected) == {
        "StatusCode.RESOURCE_EXHAUSTED: model 'slow' queue is full: 2 requests already waiting "
        "(dynamic_batching.default_queue_policy.max_queue_size); retry later"}


def test_timeout_parameter_expires_in_queue(url: str) -> None:
    """With no default timeout, a request's own `timeout` (us) bounds its time in the queue."""
    async def run() -> tuple[list[str], int]:
        async with aioclient.InferenceServerClient(url) as client:
            await client.infer("slow", [_tensor()])  # the server has measured the model's batch time
            before = await _executions(url)
            first = asyncio.ensure_future(client.infer("slow", [_tensor()]))
            await asyncio.sleep(0.005)  # let the first one start running
            queued = await _outcomes(url, 2, timeout=1000)
            await first
        return queued, await _executions(url) - before

    queued, executions = asyncio.run(run())
    # The first to arrive is admitted (nothing is queued ahead of it) and expires waiting for the instance; the
    # second has it ahead, a batch longer than its timeout, and is refused at once by admission.
    expired, refused = sorted(queued, key=lambda o: "cannot be run" in o)
    assert expired.startswith("StatusCode.DEADLINE_EXCEEDED: request to model 'slow' timed out after ")
    assert expired.endswith(" us in the queue, before it was run")
    assert refused.startswith("StatusCode.DEADLINE_EXCEEDED: request to model 'slow' cannot be run before its "
                              "queue timeout of 1000 us, and the 1 requests (1 rows) queued ahead of it need at least ")
    assert executions == 1, "timed-out requests must never be computed"


def test_client_deadline_drops_request_uncomputed(url: str) -> None:
    async def run() -> tuple[list[str], int]:
        before = await _executions(url)
        async with aioclient.InferenceServerClient(url) as client:
            first = asyncio.ensure_future(client.infer("slow", [_tensor()]))
            await asyncio.sleep(0.005)
            late = await _outcomes(url, 2, client_timeout=0.01)
            await first
            await asyncio.sleep(0.2)  # anything wrongly left in the queue would have run by now
        return late, await _executions(url) - before

    late, executions = asyncio.run(run())
    assert all(o.startswith("StatusCode.DEADLINE_EXCEEDED") for o in late)
    assert executions == 1, "requests past their gRPC deadline must never be computed"
