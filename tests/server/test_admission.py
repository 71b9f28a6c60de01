"""End to end: what overload gets at once instead of a queue to expire in: deadline-aware admission, the
server-wide --max-inflight-requests, and cancelled calls that are never computed (on every transport)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness import ServerProcess, start_server

# The `slow` test model: max_batch_size 1, one instance, max_queue_size 2, ~40 ms per request.
X = np.zeros((1, 256), np.float32)


def _tensor() -> aioclient.InferInput:
    tensor = aioclient.InferInput("INPUT0", [1, 256], "FP32")
    tensor.set_data_from_numpy(X)
    return tensor


async def _one(client: aioclient.InferenceServerClient, **kwargs: object) -> str:
    try:
        await client.infer("slow", [_tensor()], **kwargs)
        return "OK"
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"


async def _executions(client: aioclient.InferenceServerClient) -> int:
    return int((await client.get_inference_statistics("slow")).model_stats[0].execution_count)


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once_and_never_computed(url: str) -> None:
    async def run() -> tuple[float, str, int]:
        async with aioclient.InferenceServerClient(url) as client:
            started = time.monotonic()
            await client.infer("slow", [_tensor()])  # also measures the model's batch time on the server
            batch_s = time.monotonic() - started
            before = await _executions(client)
            running = asyncio.ensure_future(_one(client))
            await asyncio.sleep(0.005)
            # Two at the higher priority level wait ahead of it (its own level's queue is empty, not full).
            queued = [asyncio.ensure_future(_one(client, priority=1)) for _ in range(2)]
            await asyncio.sleep(0.005)
            # Its batch is the third to run after the one running, and its deadline leaves time for one and a half.
            refused = await _one(client, client_timeout=1.5 * batch_s)
            assert await asyncio.gather(running, *queued) == ["OK"] * 3
            await asyncio.sleep(0.1)
            return batch_s, refused, await _executions(client) - before

    batch_s, refused, executions = asyncio.run(run())
    assert refused.startswith("StatusCode.DEADLINE_EXCEEDED: request to model 'slow' cannot be run before its "
                              "deadline: "), refused
    assert "queued ahead of it need at least" in refused and refused.endswith(
        "refused without queueing, retry with a longer deadline or on another server")
    assert executions == 3, "the refused request must never be computed"


def _cancel_one_behind_another(url: str) -> int:
    """Sends one request that runs, one that waits behind it and is cancelled; returns the executions added."""
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 256])
    request.raw_input_contents.append(X.tobytes())
    statistics = service_pb2.ModelStatisticsRequest(name="slow")
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, timeout=30)  # warm: nothing of its own in the way
        before = stub.ModelStatistics(statistics, timeout=30).model_stats[0].execution_count
        running = stub.ModelInfer.future(request, timeout=30)
        time.sleep(0.005)
        cancelled = stub.ModelInfer.future(request, timeout=30)
        time.sleep(0.01)
        assert cancelled.cancel()
        running.result()
        time.sleep(0.2)  # anything wrongly left in the queue would have run by now
        after = stub.ModelStatistics(statistics, timeout=30).model_stats[0]
    return int(after.execution_count - before)


def test_a_request_cancelled_by_the_client_is_never_computed(url: str) -> None:
    assert _cancel_one_behind_another(url) == 1


@pytest.fixture(scope="module")
def limited(test_repository: Path) -> Iterator[ServerProcess]:
    served = start_server("--model-repository", str(test_repository), "--max-inflight-requests", "2")
    yield served
    served.stop()


def test_max_inflight_requests_refuses_beyond_the_limit_and_frees_as_calls_end(limited: ServerProcess) -> None:
    async def run() -> tuple[list[str], str]:
        async with aioclient.InferenceServerClient(limited.address) as client:
            await client.infer("slow", [_tensor()])
            outcomes = await asyncio.gather(*(_one(client) for _ in range(4)))
            return list(outcomes), await _one(client)

    outcomes, after = asyncio.run(run())
    assert sorted(outcomes) == ["OK", "OK"] + [
        "StatusCode.RESOURCE_EXHAUSTED: the server already has 2 inference requests in flight "
        "(--max-inflight-requests 2); retry later or on another server"] * 2
    assert after == "OK"


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--max-inflight-requests", "-1", "--max-inflight-requests -1: expected 0..2147483647 requests (0: no limit)"),
    ("--model-execution-timeout-s", "-1", "--model-execution-timeout-s -1.0: expected a number of seconds >= 0 "
     "(0: no limit)"),
    ("--model-execution-timeout-s", "nan", "--model-execution-timeout-s 'nan': expected a finite number"),
])
def test_nonsense_limits_are_refused_at_start_with_the_flag(flag: str, value: str, expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", "infergate.server", "serve", flag, value],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"infergate serve: error: {expected}"]
