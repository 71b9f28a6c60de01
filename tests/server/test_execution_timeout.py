"""End to end: an execution that hangs fails its requests within --model-execution-timeout-s (or the model's
parameter), its instance is replaced, and the model serves again; the fault model's own text reaches nobody."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import ServerProcess, start_server
from modelgen import HANG_TRIPS, hanging

FLAG_TIMEOUT_S = 0.5  # the server's --model-execution-timeout-s
PARAMETER_TIMEOUT_S = 0.25  # model hang_fast's own parameter


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hang-repo")
    hanging(root, "hang")
    hanging(root, "hang_fast", parameters={"model_execution_timeout_s": str(PARAMETER_TIMEOUT_S)})
    hanging(root, "hang_bad_timeout", parameters={"model_execution_timeout_s": "-3"})
    served = start_server("--model-repository", str(root), "--model-execution-timeout-s", str(FLAG_TIMEOUT_S))
    yield served
    served.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.address) as client:
        yield client


def _infer(client: grpcclient.InferenceServerClient, model: str,
           x: np.ndarray) -> np.ndarray | InferenceServerException:
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    try:
        result = client.infer(model, [tensor])
    except InferenceServerException as exc:
        return exc
    return np.stack([result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")])


def _rows(first: float, rows: int = 1) -> np.ndarray:
    x = np.full((rows, 4), 2.0, np.float32)
    x[:, 0] = first
    return x


@pytest.mark.parametrize(("model", "timeout_s"), [("hang", FLAG_TIMEOUT_S), ("hang_fast", PARAMETER_TIMEOUT_S)])
def test_a_hung_execution_fails_its_batch_in_time_and_the_model_serves_again(
        server: ServerProcess, client: grpcclient.InferenceServerClient, model: str, timeout_s: float) -> None:
    before = client.get_inference_statistics(model).model_stats[0].execution_count
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        # Both rows join one batch (the queue delay is 20 ms): the hang fails its neighbour too, as the batch is lost.
        outcomes = list(pool.map(lambda x: _infer(client, model, x), [_rows(HANG_TRIPS), _rows(0.0)]))
        elapsed_s = time.monotonic() - started
    expected = (f"[StatusCode.DEADLINE_EXCEEDED] model '{model}' execution ran past its limit of {timeout_s:g} s "
                "(--model-execution-timeout-s, or the model's parameter model_execution_timeout_s); the batch of "
                "2 request(s) failed and the instance was replaced")
    assert [str(o) for o in outcomes] == [expected, expected]
    assert timeout_s <= elapsed_s < timeout_s + 2.0
    # The model serves again at once, on the new instance, and says it is ready.
    answer = _infer(client, model, _rows(0.0, rows=3))
    assert isinstance(answer, np.ndarray) and np.array_equal(answer[0], _rows(0.0, rows=3))
    assert client.is_model_ready(model)
    assert client.get_inference_statistics(model).model_stats[0].execution_count == before + 1
    assert any(f"model '{model}': an execution of 2 requests ran past its {timeout_s:g} s timeout; the runtime was "
               "told to stop it" in line for line in server.log)


def test_nan_on_a_marked_row_stays_in_that_row(client: grpcclient.InferenceServerClient) -> None:
    x = _rows(0.0, rows=3)
    x[1, 3] = -1.0
    answer = _infer(client, "hang", x)
    assert isinstance(answer, np.ndarray)
    assert np.isnan(answer[1][1, 3]) and np.isfinite(np.delete(answer[1].reshape(-1), 7)).all()


def test_a_nonsense_timeout_parameter_keeps_the_model_unavailable_with_the_reason(
        client: grpcclient.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["hang_bad_timeout"]["state"] == "UNAVAILABLE"
    assert index["hang_bad_timeout"]["reason"] == ("model 'hang_bad_timeout': parameter model_execution_timeout_s "
                                                   "is '-3', expected a number of seconds >= 0 (0: no limit)")


def test_metrics_count_the_replaced_instances(server: ServerProcess, client: grpcclient.InferenceServerClient) -> None:
    import urllib.request

    def sample(family: str) -> float:
        text = urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10).read().decode()
        (line,) = [x for x in text.splitlines() if x.startswith(family + '{model="hang_fast"')]
        return float(line.split()[-1])

    _infer(client, "hang_fast", _rows(HANG_TRIPS))
    assert sample("infergate_instance_replacements_total") >= 1
    deadline = time.monotonic() + 10
    while sample("infergate_hung_executions") and time.monotonic() < deadline:
        time.sleep(0.05)  # the interrupted run ends within a kernel's time
    assert sample("infergate_hung_executions") == 0

