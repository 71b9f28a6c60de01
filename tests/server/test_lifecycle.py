"""Server lifecycle: explicit model control, Unix sockets, metrics, graceful shutdown."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from harness import EXTRA_SERVE_ARGS, start_server


def _input(value: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", list(value.shape), "FP32")
    tensor.set_data_from_numpy(value)
    return tensor


def test_explicit_model_control(test_repository: Path) -> None:
    server = start_server("--model-repository", str(test_repository), "--model-control-mode", "explicit",
                          "--load-model", "classifier")
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            assert client.is_model_ready("classifier")
            assert not client.is_model_ready("add_sub")
            index = {m.name: m.state for m in client.get_model_repository_index().models}
            assert index["add_sub"] == "UNAVAILABLE" and index["classifier"] == "READY"
            client.load_model("add_sub")
            assert client.is_model_ready("add_sub", "1") and client.is_model_ready("add_sub", "2")
            client.unload_model("classifier")
            assert not client.is_model_ready("classifier")
            with pytest.raises(InferenceServerException) as info:
                client.infer("classifier", [_input(np.zeros((1, 16), np.float32))])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert info.value.message() == "model 'classifier' is not ready: unloaded"
            client.load_model("classifier")
            assert client.is_model_ready("classifier")
            with pytest.raises(InferenceServerException) as info:
                client.load_model("no_such_model")
            assert info.value.status() == "StatusCode.NOT_FOUND"
            with pytest.raises(InferenceServerException) as info:
                client.load_model("broken_config")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "broken_config/config.pbtxt: not a valid ModelConfig" in info.value.message()
    finally:
        assert server.stop() == 0


def test_unix_socket_sidecar(test_repository: Path, tmp_path: Path) -> None:
    socket = tmp_path / "infergate.sock"
    if "--workers" in EXTRA_SERVE_ARGS:  # worker processes cannot share a socket path: refused up front
        with pytest.raises(RuntimeError, match="exited with 2"):
            start_server("--model-repository", str(test_repository), "--grpc-address", f"unix:{socket}")
        return
    server = start_server("--model-repository", str(test_repository), "--grpc-address", f"unix:{socket}",
                          "--model-control-mode", "explicit", "--load-model", "classifier")
    try:
        assert server.address == f"unix:{socket}"
        with grpcclient.InferenceServerClient(f"unix:{socket}") as client:
            assert client.is_server_ready()
            result = client.infer("classifier", [_input(np.zeros((1, 16), np.float32))])
            assert result.as_numpy("PROBS").shape == (1, 4)
    finally:
        assert server.stop() == 0


def test_metrics_endpoint_after_traffic(server: object, client: grpcclient.InferenceServerClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client.infer("classifier", [_input(np.zeros((3, 16), np.float32))])
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:  # type: ignore[attr-defined]
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    inferences = {s.labels["model"]: s.value for s in families["infergate_inferences"].samples
                  if s.name == "infergate_inferences_total"}
    assert inferences["classifier"] >= 3
    assert {"infergate_requests", "infergate_executions", "infergate_queue_depth"} <= families.keys()


def test_graceful_shutdown_finishes_in_flight(test_repository: Path) -> None:
    server = start_server("--model-repository", str(test_repository), "--model-control-mode", "explicit",
                          "--load-model", "slow")
    x = np.zeros((1, 256), np.float32)
    results: list[object] = []
    with grpcclient.InferenceServerClient(server.address) as client:
        def call() -> None:
            try:
                results.append(client.infer("slow", [_input(x)]).as_numpy("OUTPUT0").shape)
            except InferenceServerException as exc:
                results.append(exc.status())

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        while client.get_inference_statistics("slow").model_stats[0].execution_count < 1 and len(results) < 3:
            pass  # wait until the first request runs, so all three are in flight
        code = server.stop(signal.SIGTERM)
        for t in threads:
            t.join(30)
    assert code == 0
    assert results == [(1, 256)] * 3, results
    assert any("shutting down" in line for line in server.log)


def test_serve_without_arguments_serves_the_example_repository(tmp_path: Path) -> None:
    from harness import has_torch

    server = start_server(env={"INFERGATE_CACHE_DIR": str(tmp_path)})
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            ready = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
            assert {"digits_small", "identity"} <= ready
            assert ("digits_large" in ready) == has_torch()
            data = np.load(tmp_path / "example-data-v1" / "digits_heldout.npz")
            x, y = data["X"][:64], data["y"][:64]
            probs = client.infer("digits_small", [_input(x)]).as_numpy("OUTPUT0")
            assert (probs.argmax(1) == y).mean() > 0.9
            echo = client.infer("identity", [_input(x)]).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(echo, x)
            assert ("digits_cascade" in ready) == has_torch()
            if has_torch():  # the cascade served does on its evaluation rows what the build reported
                with np.load(tmp_path / "example-data-v1" / "digits_cascade_split.npz") as split:
                    rows = split["evaluation_rows"]
                report = json.loads((tmp_path / "example-data-v1" / "digits_cascade_eval.json").read_text())
                stage, right = [], []
                for start in range(0, len(rows), 64):
                    batch = rows[start:start + 64]
                    requested = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "CASCADE_STAGE")]
                    result = client.infer("digits_cascade", [_input(data["X"][batch])], outputs=requested)
                    stage.extend(result.as_numpy("CASCADE_STAGE").reshape(-1))
                    right.extend(result.as_numpy("OUTPUT0").argmax(1) == data["y"][batch])
                figures = report["evaluation"]["cascade"]
                assert float(np.mean(right)) == pytest.approx(figures["accuracy"], abs=1.5 / len(rows))
                assert float(np.mean(np.array(stage) == 0)) == pytest.approx(figures["answered_fraction"][0],
                                                                             abs=1.5 / len(rows))
    finally:
        assert server.stop() == 0
    assert any("serving the example repository" in line for line in server.log)


def test_a_new_version_that_fails_to_load_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    from modelgen import classifier, write

    classifier(tmp_path / "classifier/1/model.onnx")
    write(tmp_path / "classifier/config.pbtxt", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    server = start_server("--model-repository", str(tmp_path), "--model-control-mode", "explicit",
                          "--load-model", "classifier")
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
            before = client.infer("classifier", [_input(x)]).as_numpy("PROBS")
            write(tmp_path / "classifier/2/model.onnx", "not an ONNX model")  # the newest version, broken
            with pytest.raises(InferenceServerException) as info:
                client.load_model("classifier")
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert client.is_model_ready("classifier") and client.is_model_ready("classifier", "1")
            np.testing.assert_array_equal(client.infer("classifier", [_input(x)]).as_numpy("PROBS"), before)
            (entry,) = [m for m in client.get_model_repository_index().models if m.name == "classifier"]
            assert (entry.version, entry.state) == ("1", "READY")
            assert entry.reason.startswith("the previous load still serves (version 1); loading again failed: ")
            assert "classifier" in entry.reason and "model.onnx" in entry.reason
    finally:
        assert server.stop() == 0
