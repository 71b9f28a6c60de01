"""A failing batch fails only the request that caused it: the pure blame decision, then the batcher around it."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from infergate import kernels
from infergate.batching import batcher as batcher_module
from infergate.batching.batcher import DynamicBatcher
from infergate.batching.faults import at_row, plan_after_failure, request_at
from infergate.batching.policy import BatchLimits
from infergate.batching.stats import ModelStats
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.errors import InferError, RowError, Status
from infergate.models.features import build_stage
from infergate.models.runtime import StopToken
from infergate.proto import model_config_pb2 as mc

WIDTH = 2  # features per row
POISON = 666.0  # a row whose first value is this makes FaultModel raise


# -- the decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_row", "expected"), [
    (0, (0, 0)), (2, (0, 2)), (3, (1, 0)), (4, (2, 0)), (5, (2, 1)), (6, None), (-1, None)])
def test_a_batch_row_maps_to_its_request_and_own_row(batch_row: int, expected: tuple[int, int] | None) -> None:
    assert request_at([3, 1, 2], batch_row) == expected


def test_a_transform_error_blames_one_request_at_its_own_row() -> None:
    cause = kernels.NonFiniteInputError(row=4, column=1, value=float("inf"))
    plan = plan_after_failure("m", [3, 3, 1], RowError("model 'm' input 'X'", 4, cause))
    assert plan is not None
    assert (plan.batch_row, plan.failed, plan.rerun) == (4, 1, (0, 2))
    assert plan.error.row == 1
    assert plan.error.status is Status.INVALID_ARGUMENT
    assert plan.error.message == "model 'm' input 'X': input column 1 is inf at row 1; infinite values are not accepted"


def test_a_kernel_error_from_the_runtime_itself_is_blamed_too() -> None:
    plan = plan_after_failure("m", [2, 2], kernels.UnknownCategoryError(row=3, column=0, value=9.0))
    assert plan is not None
    assert (plan.failed, plan.rerun) == (1, (0,))
    assert plan.error.message == "model 'm': input column 0 has unknown category 9.0 at row 1"


@pytest.mark.parametrize("exc", [
    ValueError("boom"), kernels.ShapeError("(n, 3)", (2, 4)), kernels.InputTypeError("input is not numeric"),
    RowError("model 'm'", 7, kernels.NonFiniteInputError(7, 0, float("inf"))),  # outside the batch
])
def test_a_failure_without_a_row_in_the_batch_blames_nobody(exc: Exception) -> None:
    assert plan_after_failure("m", [3, 3], exc) is None


class _Opaque(Exception):
    """A cause with a row whose constructor does not take its fields back."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.row = 3


def test_a_cause_that_cannot_be_rebuilt_blames_nobody() -> None:
    assert plan_after_failure("m", [2, 2], RowError("model 'm'", 3, _Opaque("row 3 is bad"))) is None


def _row_errors() -> Iterator[type[kernels.KernelError]]:
    pending: list[type[kernels.KernelError]] = [kernels.KernelError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "row" in inspect.signature(cls).parameters:
            yield cls


SAMPLE_FIELDS: dict[str, Any] = {"what": "token is not str or bytes", "row": 5, "column": 2, "source_column": 1,
                                 "value": 1.5}


@pytest.mark.parametrize("cls", sorted(_row_errors(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_every_kernel_error_with_a_row_rebuilds_at_another_row(cls: type[kernels.KernelError]) -> None:
    names = inspect.signature(cls).parameters
    cause = cls(**{name: SAMPLE_FIELDS[name] for name in names})
    rebuilt = at_row(RowError("model 'm'", 5, cause), 0)
    assert rebuilt is not None and type(rebuilt.cause) is cls
    assert {n: getattr(rebuilt.cause, n) for n in names} == {**{n: SAMPLE_FIELDS[n] for n in names}, "row": 0}
    assert "at row 0" in rebuilt.message and "row 5" not in rebuilt.message


# -- the batcher around it, with fault-injection models ----------------------------------------


class FaultModel:
    """Doubles its input; each execution waits for the gate and records its rows. A row whose first value is
    POISON raises a kernels error naming that row of the batch; a NaN anywhere raises one naming no row."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.executions: list[int] = []  # rows of each call, failed ones too

    def __call__(self, inputs: dict[str, np.ndarray], stop: StopToken | None = None) -> Mapping[str, np.ndarray]:
        self.started.release()
        self.gate.wait(10)
        x = inputs["X"]
        self.executions.append(len(x))
        poisoned = np.flatnonzero(x[:, 0] == POISON)
        if len(poisoned):
            raise kernels.InputTypeError("poisoned row", row=int(poisoned[0]), column=0, value=POISON)
        if np.isnan(x).any():
            raise ValueError(f"NaN next to {np.nanmax(x)}")
        return {"Y": x * 2}


def _rows(*first: float) -> dict[str, np.ndarray]:
    return {"X": np.array([[v, 1.0] for v in first], np.float32)}


def _scaling_stage() -> Any:
    """Standardizes X with no imputer: a NaN is a NonFiniteOutputError at its row of the batch."""
    spec = ModelSpec("m", "onnxruntime_onnx", 16, [TensorSpec("X", "FP32", (WIDTH,))],
                     [TensorSpec("Y", "FP32", (WIDTH,))], mc.ModelConfig(name="m"), {})
    ops = [kernels.Standardize((0, 1), mean=(0.0, 0.0), scale=(1.0, 1.0))]
    return build_stage(spec, "test", kernels.Pipeline(ops, WIDTH).to_config())


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


async def _submit_behind_a_blocker(batcher: DynamicBatcher, model: FaultModel,
                                   requests: list[dict[str, np.ndarray]]) -> list[asyncio.Future[Any]]:
    """Submits `requests` while a first request holds the only instance, so they form one batch."""
    model.gate.clear()
    blocker = batcher.submit(_rows(0.0), 1)
    await asyncio.to_thread(model.started.acquire, True, 10)
    futures = [batcher.submit(r, len(r["X"])) for r in requests]
    model.gate.set()
    await blocker
    return futures


async def _outcomes(futures: list[asyncio.Future[Any]]) -> list[Any]:
    return await asyncio.gather(*futures, return_exceptions=True)


def test_a_poisoned_row_in_the_transforms_fails_its_request_alone(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model, stats = FaultModel(), ModelStats()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor, stats=stats,
                                 assemble=_scaling_stage().assemble)
        good1, good2 = _rows(1, 2, 3), _rows(7, 8, 9)
        bad = _rows(4, 5, 6)
        bad["X"][2, 1] = np.nan  # its own row 2; row 5 of the batch
        futures = await _submit_behind_a_blocker(batcher, model, [good1, bad, good2])
        stats_before = (stats.execution_count, stats.inference_count)
        first, error, last = await _outcomes(futures)
        np.testing.assert_array_equal(first["Y"], good1["X"] * 2)
        np.testing.assert_array_equal(last["Y"], good2["X"] * 2)
        assert isinstance(error, RowError) and error.status is Status.INVALID_ARGUMENT
        assert error.message == ("model 'm' input 'X': output column 1 (from input column 1) is nan at row 2: a NaN "
                                 "input where the pipeline has no imputer, a log1p below -1, or an overflow")
        # The blocker, then the rerun alone: the failed run stopped in the transforms.
        assert model.executions == [1, 6]
        assert (stats.execution_count - stats_before[0], stats.inference_count - stats_before[1]) == (1, 6)

    asyncio.run(run())


def test_a_kernel_error_from_the_runtime_reruns_the_batch_once(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = FaultModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor)
        requests = [_rows(1, 2), _rows(3, POISON), _rows(5)]
        first, error, last = await _outcomes(await _submit_behind_a_blocker(batcher, model, requests))
        assert first["Y"][:, 0].tolist() == [2, 4] and last["Y"][:, 0].tolist() == [10]
        assert isinstance(error, RowError)
        assert error.message == f"model 'm': poisoned row at row 1, column 0: {POISON!r}"
        assert model.executions == [1, 5, 3]

    asyncio.run(run())


def test_each_poisoned_request_is_dropped_in_turn(executor: ThreadPoolExecutor) -> None:
    async def run() -> None:
        model = FaultModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor)
        requests = [_rows(POISON), _rows(1), _rows(2, POISON), _rows(POISON, 3)]
        outcomes = await _outcomes(await _submit_behind_a_blocker(batcher, model, requests))
        assert [o.row if isinstance(o, RowError) else o["Y"][0, 0] for o in outcomes] == [0, 2, 1, 0]
        assert model.executions == [1, 6, 5, 3, 1]  # one request fewer each time, bounded by the batch

    asyncio.run(run())


def _logged_cause(caplog: pytest.LogCaptureFixture, error: object) -> str:
    """What the log says of an INTERNAL error the client saw only by its id (its own exception's text)."""
    assert isinstance(error, InferError) and error.status is Status.INTERNAL, error
    match = re.fullmatch(r"model 'm' failed to execute \(error id (\w{12})\); the server log has the details",
                         error.message)
    assert match, error.message
    (line,) = [r.getMessage() for r in caplog.records if f"(error id {match[1]})" in r.getMessage()]
    return line.split("): ", 1)[1]


def test_a_failure_without_a_row_retries_alone_and_each_sees_only_its_own_error(
        executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        model, stats = FaultModel(), ModelStats()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor, stats=stats)
        requests = [_rows(1), _rows(np.nan, 11), _rows(2), _rows(np.nan, 22)]
        futures = await _submit_behind_a_blocker(batcher, model, requests)
        before = stats.execution_count
        good1, bad1, good2, bad2 = await _outcomes(futures)
        assert good1["Y"][0, 0] == 2 and good2["Y"][0, 0] == 4
        assert _logged_cause(caplog, bad1) == "ValueError: NaN next to 11.0"
        assert _logged_cause(caplog, bad2) == "ValueError: NaN next to 22.0"
        assert model.executions == [1, 6, 1, 2, 1, 2]
        assert stats.execution_count - before == 2  # the two good requests, each alone

    asyncio.run(run())


def test_a_batcher_fault_gives_no_request_another_requests_text(executor: ThreadPoolExecutor,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_plan(*args: object) -> None:
        raise RuntimeError("text of the poisoned request")

    monkeypatch.setattr(batcher_module, "plan_after_failure", broken_plan)

    async def run() -> None:
        model = FaultModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor)
        outcomes = await _outcomes(await _submit_behind_a_blocker(batcher, model, [_rows(1), _rows(POISON)]))
        assert [o.message for o in outcomes] == ["internal error while running a batch of model 'm'"] * 2

    asyncio.run(run())


def test_a_rerun_that_fails_without_a_row_retries_only_the_requests_left(executor: ThreadPoolExecutor,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        model = FaultModel()
        batcher = DynamicBatcher("m", BatchLimits(max_batch_size=16), model, executor)
        requests = [_rows(POISON), _rows(np.nan, 5), _rows(3)]
        poisoned, bad, good = await _outcomes(await _submit_behind_a_blocker(batcher, model, requests))
        assert isinstance(poisoned, RowError) and poisoned.row == 0
        assert _logged_cause(caplog, bad) == "ValueError: NaN next to 5.0"
        assert good["Y"][0, 0] == 6
        assert model.executions == [1, 4, 3, 2, 1]  # the blocker, the batch, the rerun, then the two alone

    asyncio.run(run())
