"""A poisoned row fails only its own request, end to end: the batch's other requests get correct answers and the
batch is computed once more at most (ModelStatistics and the server log say so)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import start_server
from modelgen import nan_rejecting

MODEL = "nan_guard"
N_IN = 4  # features per row
ROWS = 3  # rows per request
REQUESTS = 4  # concurrent requests; their rows fill one batch exactly
RERUN_LINE = re.compile(rf"model '{MODEL}': batch of \d+ requests \(\d+ rows\) failed at row \d+, in request \d+ "
                        r"\(its row (\d+)\); running the other \d+ again")


def _nan_message(column: int, row: int) -> str:
    return (f"model '{MODEL}' input 'INPUT0': output column {column} (from input column {column}) is nan at row "
            f"{row}: a NaN input where the pipeline has no imputer, a log1p below -1, or an overflow")


class Served:
    """The fault model's server and what it should answer, computed offline."""

    def __init__(self, root: Path) -> None:
        self.mean, self.scale = nan_rejecting(root, MODEL, n_in=N_IN, max_batch_size=ROWS * REQUESTS)
        self.session = ort.InferenceSession(str(root / MODEL / "1/model.onnx"), providers=["CPUExecutionProvider"])
        self.server = start_server("--model-repository", str(root))

    def expected(self, x: np.ndarray) -> np.ndarray:
        features = ((x - self.mean) / self.scale).astype(np.float32)
        return self.session.run(["LOGITS"], {"INPUT0": features})[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("faults-repo"))
    yield served
    served.server.stop()


@pytest.fixture()
def client(served: Served) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(served.server.address) as client:
        yield client


def _infer(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray | InferenceServerException:
    infer_input = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    try:
        return client.infer(MODEL, [infer_input]).as_numpy("LOGITS")  # type: ignore[no-any-return]
    except InferenceServerException as exc:
        return exc


def _stats(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    return client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]  # type: ignore[no-any-return]


def _batches(stats: dict[str, Any]) -> dict[int, int]:
    """Executions by batch size in rows."""
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def _run_one_batch(served: Served, client: grpcclient.InferenceServerClient,
                   poison: dict[int, tuple[int, int]]) -> tuple[list[Any], list[np.ndarray], dict[str, int]]:
    """Sends REQUESTS concurrent requests of ROWS rows, request i with a NaN at (its row, column) poison[i];
    returns each one's answer or error, the inputs, and the deltas of the model's statistics."""
    rng = np.random.default_rng(len(poison))
    inputs = [rng.normal(0.0, 1.0, (ROWS, N_IN)).astype(np.float32) for _ in range(REQUESTS)]
    for index, (row, column) in poison.items():
        inputs[index][row, column] = np.nan
    before, lines_before = _stats(client), len(served.server.log)
    with ThreadPoolExecutor(REQUESTS) as pool:
        outcomes = list(pool.map(lambda x: _infer(client, x), inputs))
    after = _stats(client)
    batches_before = _batches(before)
    deltas = {
        "executions": int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)),
        "inferences": int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)),
        "reruns": sum(1 for line in served.server.log[lines_before:] if RERUN_LINE.search(line)),
        **{f"batch_{size}": count - batches_before.get(size, 0) for size, count in _batches(after).items()
           if count != batches_before.get(size, 0)},
    }
    return outcomes, inputs, deltas


def test_a_poisoned_row_fails_its_request_alone(served: Served, client: grpcclient.InferenceServerClient) -> None:
    outcomes, inputs, deltas = _run_one_batch(served, client, {1: (2, 1)})
    error = outcomes[1]
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == _nan_message(column=1, row=2)  # its own row, not the batch's
    for index in (0, 2, 3):
        np.testing.assert_allclose(outcomes[index], served.expected(inputs[index]), rtol=1e-5, atol=1e-5)
    # One batch of 12 rows failed in its transforms; the other 9 rows computed once, in one execution.
    assert deltas == {"executions": 1, "inferences": 9, "reruns": 1, f"batch_{3 * ROWS}": 1}


def test_two_poisoned_requests_each_get_only_their_own_error(served: Served,
                                                             client: grpcclient.InferenceServerClient) -> None:
    outcomes, inputs, deltas = _run_one_batch(served, client, {0: (1, 3), 2: (0, 0)})
    assert [o.message() for o in (outcomes[0], outcomes[2])] == [_nan_message(column=3, row=1),
                                                                 _nan_message(column=0, row=0)]
    for index in (1, 3):
        np.testing.assert_allclose(outcomes[index], served.expected(inputs[index]), rtol=1e-5, atol=1e-5)
    assert deltas == {"executions": 1, "inferences": 6, "reruns": 2, f"batch_{2 * ROWS}": 1}
