"""Graceful shutdown on every transport: NOT_SERVING first, the pre-stop pause, UNAVAILABLE, the drain, exit 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from infergate.server.draining import DRAINING_MESSAGE, is_refused_while_draining, second_signal_exit_status

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server
from modelgen import slow, write

SLOW_ITERATIONS = 20000  # about 0.2 s a call here: four calls hold the drain open for most of a second
QUEUE_SIZE = 3  # so 1 running + 3 queued are admitted at once
IN_FLIGHT = QUEUE_SIZE + 1
EXIT_TIMEOUT_S = 20.0  # the grace period every drain here must finish well within
WIDTH = 256
# Each transport once; under .ci's INFERGATE_TEST_SERVE_ARGS only that one, which every server here gets anyway.
CASES = [EXTRA_SERVE_ARGS] if EXTRA_SERVE_ARGS else [(), ("--transport", "grpcio"), ("--workers", "2")]
IDS = [" ".join(case) or "native" for case in CASES]


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shutdown_repo")
    slow(root / "slow/1/model.onnx", iterations=SLOW_ITERATIONS, width=WIDTH)
    write(root / "slow/config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: 1
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {WIDTH} ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {WIDTH} ] }} ]
dynamic_batching {{ default_queue_policy {{ max_queue_size: {QUEUE_SIZE} }} }}
""")
    return root


def _serve(repository: Path, case: tuple[str, ...], *flags: str) -> ServerProcess:
    return start_server("--model-repository", str(repository), "--exit-timeout-s", str(EXIT_TIMEOUT_S), *case,
                        *flags)


def _infer(address: str, x: np.ndarray, client: grpcclient.InferenceServerClient | None = None) -> np.ndarray:
    """One call, on its own connection unless given a client."""
    if client is None:
        with grpcclient.InferenceServerClient(address) as own:
            return _infer(address, x, own)
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("slow", [tensor]).as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def _open_stream(address: str) -> tuple[grpcclient.InferenceServerClient, list[object]]:
    """A ModelStreamInfer left open after its first answer: a call in flight that holds the drain open until
    --exit-timeout-s. The list gets each answer or error as it comes."""
    answered: list[object] = []
    client = grpcclient.InferenceServerClient(address)
    client.start_stream(lambda result, error: answered.append(error or result))
    tensor = grpcclient.InferInput("INPUT0", [1, WIDTH], "FP32")
    tensor.set_data_from_numpy(np.ones((1, WIDTH), np.float32))
    client.async_stream_infer("slow", [tensor])
    _wait_for(lambda: bool(answered), "the stream's first answer")
    return client, answered


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, f"no {what} within {timeout_s} s"
        time.sleep(0.005)


def _logged(server: ServerProcess, text: str, count: int = 1) -> Callable[[], bool]:
    return lambda: sum(text in line for line in list(server.log)) >= count


def _executions(address: str) -> int:
    with grpcclient.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics("slow").model_stats[0]
        return int(stats.execution_count)


def _refused_on_drain(server: ServerProcess, case: tuple[str, ...]) -> None:
    """Waits until every process that serves gRPC drains (each worker says so itself)."""
    if "--workers" in case:
        _wait_for(_logged(server, "draining: refusing new calls", int(case[case.index("--workers") + 1])),
                  "worker drain")
    else:
        _wait_for(_logged(server, "shutting down: refusing new calls"), "drain")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sigterm_during_load_finishes_admitted_calls_and_refuses_new_ones(slow_repository: Path,
                                                                           case: tuple[str, ...]) -> None:
    server = _serve(slow_repository, case)
    rows = np.random.default_rng(7).standard_normal((IN_FLIGHT, 1, WIDTH)).astype(np.float32)
    expected = [_infer(server.address, row) for row in rows]  # the model's answers, before any shutdown
    answers: dict[int, list[object]] = {i: [] for i in range(IN_FLIGHT)}

    def call(i: int) -> None:
        try:
            answers[i].append(_infer(server.address, rows[i]))
        except InferenceServerException as exc:
            answers[i].append(exc.status())

    earlier = grpcclient.InferenceServerClient(server.address)  # connected before the signal
    executed_before = _executions(server.address)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    # Admitted: one running and the rest queued; the queue is full, so a fifth call now would be refused.
    _wait_for(lambda: _executions(server.address) > executed_before, "first execution")
    signalled_s = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    _refused_on_drain(server, case)
    with pytest.raises(InferenceServerException) as refused:
        _infer(server.address, rows[0])
    refused_s = time.monotonic() - signalled_s
    with pytest.raises(InferenceServerException) as refused_earlier:  # its connection had a GOAWAY, or is open
        _infer(server.address, rows[0], earlier)
    earlier.close()
    code = server.process.wait(EXIT_TIMEOUT_S)
    exited_s = time.monotonic() - signalled_s
    for thread in threads:
        thread.join(EXIT_TIMEOUT_S)
    server.stop()
    assert code == 0, "".join(server.log)
    for exc in (refused.value, refused_earlier.value):
        assert (exc.status(), exc.message()) == ("StatusCode.UNAVAILABLE", DRAINING_MESSAGE)
    for i in range(IN_FLIGHT):  # exactly one answer each, and the right one: nothing lost, repeated or swapped
        assert len(answers[i]) == 1, answers[i]
        np.testing.assert_allclose(answers[i][0], expected[i], rtol=1e-6)  # type: ignore[arg-type]
    assert refused_s < exited_s < EXIT_TIMEOUT_S / 2
    print(f"{IDS[CASES.index(case)]}: refused a new call {refused_s:.2f} s after SIGTERM, exited 0 after "
          f"{exited_s:.2f} s with {IN_FLIGHT} calls drained")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_shutdown_delay_reports_not_serving_and_still_serves(slow_repository: Path, case: tuple[str, ...]) -> None:
    server = _serve(slow_repository, case, "--shutdown-delay-s", "1")
    x = np.ones((1, WIDTH), np.float32)
    expected = _infer(server.address, x)
    assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
    signalled_s = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    _wait_for(lambda: _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
    with grpcclient.InferenceServerClient(server.address) as client:
        assert not client.is_server_ready()
    np.testing.assert_allclose(_infer(server.address, x), expected, rtol=1e-6)  # still served in the pause
    assert time.monotonic() - signalled_s < 1.0, "the pause ended before the checks ran: they proved nothing"
    code = server.process.wait(EXIT_TIMEOUT_S)
    assert code == 0
    assert time.monotonic() - signalled_s >= 1.0
    server.stop()


@pytest.mark.parametrize("phase", ["pause", "drain"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_second_signal_exits_at_once(slow_repository: Path, case: tuple[str, ...], phase: str) -> None:
    delay_s = EXIT_TIMEOUT_S if phase == "pause" else 0.0
    server = _serve(slow_repository, case, "--shutdown-delay-s", str(delay_s))
    port = int(server.address.rpartition(":")[2])
    streaming, answered = _open_stream(server.address)
    server.process.send_signal(signal.SIGTERM)
    if phase == "pause":
        _wait_for(_logged(server, "still serving for --shutdown-delay-s"), "the pause")
    else:
        _refused_on_drain(server, case)
    signalled_s = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(EXIT_TIMEOUT_S)
    assert time.monotonic() - signalled_s < 3.0
    streaming.close()
    server.stop()
    assert code == 128 + signal.SIGTERM  # 143, as if the signal had killed it
    assert _logged(server, "second SIGTERM during shutdown: exiting at once with status 143")()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # nothing listens: with --workers, they were killed too


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_call_past_the_exit_timeout_gets_unavailable_and_the_exit_is_clean(slow_repository: Path,
                                                                             case: tuple[str, ...]) -> None:
    exit_timeout_s = 0.5
    server = _serve(slow_repository, case, "--exit-timeout-s", str(exit_timeout_s))
    streaming, answered = _open_stream(server.address)  # held open past the grace
    signalled_s = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(EXIT_TIMEOUT_S)
    exited_s = time.monotonic() - signalled_s
    _wait_for(lambda: len(answered) == 2, "the stream's end")
    streaming.close()
    server.stop()
    assert code == 0
    assert exit_timeout_s <= exited_s < exit_timeout_s + 3.0
    ended = answered[1]
    assert isinstance(ended, InferenceServerException) and ended.status() == "StatusCode.UNAVAILABLE", ended
    assert _logged(server, f"after --exit-timeout-s {exit_timeout_s:g}")()


def test_what_a_draining_server_refuses_and_how_a_second_signal_exits() -> None:
    assert is_refused_while_draining("/inference.GRPCInferenceService/ModelInfer")
    assert is_refused_while_draining("/inference.GRPCInferenceService/ServerReady")
    assert not is_refused_while_draining("/grpc.health.v1.Health/Check")  # NOT_SERVING, not an error
    assert not is_refused_while_draining("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert (second_signal_exit_status(signal.SIGTERM), second_signal_exit_status(signal.SIGINT)) == (143, 130)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_shutdown_delay_is_refused_at_start(value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "infergate.server", "serve", "--shutdown-delay-s", value],
                          capture_output=True, text=True, timeout=60)
    shown = "-1.0" if value == "-1" else f"'{value}'"
    expected = "a number of seconds >= 0" if value == "-1" else "a finite number"
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"infergate serve: error: --shutdown-delay-s {shown}: expected {expected}"]
