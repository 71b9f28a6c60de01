"""End to end: an execution that hangs fails its requests within --model-execution-timeout-s (or the model's
parameter), its instance is replaced, and the model serves again; the fault model's own text reaches nobody."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import ServerProcess, start_server
from modelgen import HANG_TRIPS, hanging, hanging_torchscript

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



@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_an_execution_that_never_ends_does_not_hold_the_exit(tmp_path: Path, runtime: str) -> None:
    """SIGTERM while a run hangs, long before its execution timeout: its caller gets UNAVAILABLE at the end of the
    drain, the runtime is told to stop (ONNX Runtime does), and the process exits 0 within the grace period even
    when the run cannot be stopped (TorchScript: its thread is left behind, not joined for ever)."""
    if runtime == "torchscript":
        pytest.importorskip("torch")
        hanging_torchscript(tmp_path, "hang")
        name, output = "INPUT__0", "OUTPUT__0"
    else:
        hanging(tmp_path, "hang")
        name, output = "INPUT0", "OUTPUT0"
    exit_timeout_s = 0.5
    # A timeout far off: the watchdog never fires here, so only the drain can end the call.
    server = start_server("--model-repository", str(tmp_path), "--exit-timeout-s", str(exit_timeout_s),
                          "--model-execution-timeout-s", "600")
    try:
        with grpcclient.InferenceServerClient(server.address) as client, ThreadPoolExecutor(1) as pool:
            ordinary = grpcclient.InferInput(name, [1, 4], "FP32")
            ordinary.set_data_from_numpy(_rows(0.0))
            assert np.array_equal(client.infer("hang", [ordinary]).as_numpy(output), _rows(0.0))
            tensor = grpcclient.InferInput(name, [1, 4], "FP32")
            tensor.set_data_from_numpy(_rows(HANG_TRIPS))
            hung = pool.submit(client.infer, "hang", [tensor], client_timeout=20)
            time.sleep(0.5)  # the run has started
            signalled_s = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(30)
            exited_s = time.monotonic() - signalled_s
            with pytest.raises(InferenceServerException) as refused:
                hung.result(10)
    finally:
        server.stop()
    assert code == 0
    assert exited_s < exit_timeout_s + 5.0
    assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
    assert any("model 'hang': an execution of 1 requests still runs after the 1 s drain" in line
               for line in server.log)
    left_behind = any("model executions are still running after the drain" in line for line in server.log)
    assert left_behind == (runtime == "torchscript")


def test_health_says_not_serving_while_hung_runs_refuse_and_serving_once_they_end(tmp_path: Path) -> None:
    """Under --strict-readiness, a model refusing for executions it cannot stop takes the server out of rotation
    (health NOT_SERVING, ModelReady false) until they end, without anyone asking ModelReady."""
    pytest.importorskip("torch")
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    hanging_torchscript(tmp_path, "hang", parameters={"model_execution_timeout_s": "0.2"})
    server = start_server("--model-repository", str(tmp_path), "--strict-readiness", "true")
    long_trips = 3_000_000.0  # 2-9 s of TorchScript here: well past the timeout, then it ends by itself
    try:
        with grpcclient.InferenceServerClient(server.address) as client, \
                grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                return int(health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)

            assert status() == health_pb2.HealthCheckResponse.SERVING
            for _ in range(2):  # the cap: 2 hung runs per instance
                tensor = grpcclient.InferInput("INPUT__0", [1, 4], "FP32")
                tensor.set_data_from_numpy(_rows(long_trips))
                with pytest.raises(InferenceServerException, match="ran past its limit of 0.2 s"):
                    client.infer("hang", [tensor])
            assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not client.is_model_ready("hang") and not client.is_server_ready()
            deadline_s = time.monotonic() + 30
            while status() != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline_s:
                time.sleep(0.05)
            assert status() == health_pb2.HealthCheckResponse.SERVING
            assert client.is_model_ready("hang")
            ordinary = grpcclient.InferInput("INPUT__0", [1, 4], "FP32")
            ordinary.set_data_from_numpy(_rows(0.0))
            assert np.array_equal(client.infer("hang", [ordinary]).as_numpy("OUTPUT__0"), _rows(0.0))
    finally:
        assert server.stop() == 0
