"""Cascades served by a real server: routing row by row under concurrent mixed load, the edge thresholds,
deadlines and cancellation across stages, load/unload refusals, bad configs, metadata and the live view."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from infergate.cascade.calibration import calibrated_probabilities
from infergate.cascade.config import CascadeConfig, StageConfig, write_cascade_config
from infergate.cascade.model_config import cascade_config_pbtxt
from infergate.cascade.routing import plan_cascade
from infergate.models.config import TensorSpec

from harness import ServerProcess, has_torch, start_server
from modelgen import OPSET, classifier, tanh_loop_body, torch_linear, write

FEATURES, CLASSES, MAX_BATCH = 16, 4, 8
INPUTS = [TensorSpec("INPUT0", "FP32", (FEATURES,))]
OUTPUTS = [TensorSpec("PROBS", "FP32", (CLASSES,)), TensorSpec("LOGITS", "FP32", (CLASSES,))]
SMALL_T, LARGE_T, THRESHOLD = 1.5, 0.8, 0.9
SLOW_ITERATIONS = 40000  # Loop trips of the slow stage: a few hundred ms per batch here


def _plain(root: Path, name: str, seed: int, hidden: int, n_in: int = FEATURES, n_out: int = CLASSES) -> None:
    classifier(root / name / "1/model.onnx", n_in, hidden, n_out, seed=seed)
    write(root / name / "config.pbtxt", f"""
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH}
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
""")


def _slow_classifier(path: Path) -> None:
    """INPUT0 [b, 16] -> SLOW_ITERATIONS rounds of MatMul+Tanh in a Loop -> PROBS, LOGITS [b, 4]."""
    rng = np.random.default_rng(5)
    body = tanh_loop_body(FEATURES)
    inits = [numpy_helper.from_array(np.array(SLOW_ITERATIONS, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array((rng.standard_normal((FEATURES, FEATURES)) / 4).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), "W1"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "B1")]
    nodes = [helper.make_node("Loop", ["trips", "cond", "INPUT0"], ["x"], body=body),
             helper.make_node("Gemm", ["x", "W1", "B1"], ["LOGITS"]),
             helper.make_node("Softmax", ["LOGITS"], ["PROBS"], axis=1)]
    graph = helper.make_graph(nodes, "slow_classifier",
                              [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", FEATURES])],
                              [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["batch", CLASSES]),
                               helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, path)


def _cascade(root: Path, name: str, stages: list[StageConfig], measure: str = "max_prob") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(cascade_config_pbtxt(name, INPUTS, OUTPUTS, CLASSES, MAX_BATCH))
    write_cascade_config(root / name / "cascade.json", CascadeConfig(measure, tuple(stages)))  # type: ignore[arg-type]


def _stage(model: str, threshold: float | None, temperature: float = 1.0, output: str = "LOGITS") -> StageConfig:
    return StageConfig(model, None, output, "logits" if output in ("LOGITS", "OUTPUT__1") else "probabilities",
                       temperature, threshold)


def build_cascade_repository(root: Path) -> Path:
    _plain(root, "small", seed=11, hidden=8)
    _plain(root, "large", seed=12, hidden=64)
    _slow_classifier(root / "slow_small/1/model.onnx")
    write(root / "slow_small/config.pbtxt", f'platform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n')
    _cascade(root, "casc", [_stage("small", THRESHOLD, SMALL_T), _stage("large", None, LARGE_T, "PROBS")])
    _cascade(root, "casc_zero", [_stage("small", 0.0, SMALL_T), _stage("large", None)])
    # T = 50 flattens the small stage's probabilities, so no row is certain: threshold 1 answers none.
    _cascade(root, "casc_one", [_stage("small", 1.0, 50.0), _stage("large", None, LARGE_T, "PROBS")])
    _cascade(root, "casc_slow", [_stage("slow_small", 0.99, 50.0), _stage("large", None)])
    if has_torch():  # TorchScript names its tensors INPUT__0 / OUTPUT__0: matched to the cascade's by position
        torch_linear(root / "torch_linear/1/model.pt")
        write(root / "torch_linear/config.pbtxt", f"""
platform: "pytorch_libtorch"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 4 ] }},
          {{ name: "OUTPUT__1", data_type: TYPE_FP32, dims: [ 4 ] }} ]
""")
        _cascade(root, "casc_torch", [_stage("small", THRESHOLD, SMALL_T), _stage("torch_linear", None, 1.0,
                                                                                  "OUTPUT__1")])
    _cascade(root, "casc_self", [_stage("small", 0.5), _stage("casc_self", None)])
    _plain(root, "small_narrow", seed=13, hidden=8, n_in=8)
    _plain(root, "small_3", seed=14, hidden=8, n_out=3)
    _cascade(root, "casc_inputs", [_stage("small", 0.5), _stage("small_narrow", None)])
    _cascade(root, "casc_widths", [_stage("small", 0.5), _stage("small_3", None)])
    _cascade(root, "casc_missing", [_stage("small", 0.5), _stage("nope", None)])
    _cascade(root, "casc_threshold", [_stage("small", 0.5), _stage("large", None)])
    doc = json.loads((root / "casc_threshold/cascade.json").read_text())
    doc["stages"][0]["threshold"] = 1.5
    (root / "casc_threshold/cascade.json").write_text(json.dumps(doc))
    (root / "casc_bad").mkdir()
    (root / "casc_bad/config.pbtxt").write_text(cascade_config_pbtxt("casc_bad", INPUTS, OUTPUTS, CLASSES, MAX_BATCH))
    (root / "casc_bad/cascade.json").write_text(json.dumps({"measure": "median", "stages": []}))
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cascade_repository(tmp_path_factory.mktemp("cascades"))


@pytest.fixture(scope="module")
def cascade_server(repository: Path) -> Iterator[ServerProcess]:
    proc = start_server("--model-repository", str(repository))
    yield proc
    proc.stop()


@pytest.fixture()
def client(cascade_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(cascade_server.address) as c:
        yield c


def _infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, outputs: list[str] | None = None,
           **kwargs: Any) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput("INPUT0" if model != "torch_linear" else "INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested, **kwargs)


def _expected(client: grpcclient.InferenceServerClient, x: np.ndarray, stages: list[tuple[str, str, float]],
              thresholds: list[float]) -> tuple[Any, list[dict[str, np.ndarray]]]:
    """The plan the pure core makes from each stage's own answers for all rows, and those answers."""
    answers, calibrated = [], []
    for model, output, temperature in stages:
        result = _infer(client, model, x)
        names = ("OUTPUT__0", "OUTPUT__1") if model == "torch_linear" else ("PROBS", "LOGITS")
        answer = {"PROBS": result.as_numpy(names[0]), "LOGITS": result.as_numpy(names[1])}
        answers.append(answer)
        kind = "logits" if output in ("LOGITS", "OUTPUT__1") else "probabilities"
        calibrated.append(calibrated_probabilities(answer["LOGITS" if kind == "logits" else "PROBS"], kind,
                                                   temperature))
    return plan_cascade(calibrated, thresholds, "max_prob"), answers


def _rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return (rng.standard_normal((count, FEATURES)) * 0.6).astype(np.float32)


def test_routing_is_exact_under_concurrent_mixed_load(client: grpcclient.InferenceServerClient,
                                                      cascade_server: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    requests = [_rows(rng, int(rng.integers(1, MAX_BATCH + 1))) for _ in range(160)]
    outputs = ["PROBS", "LOGITS", "CASCADE_STAGE", "CASCADE_CONFIDENCE", "CASCADE_PROBABILITIES"]
    stages = [("small", "LOGITS", SMALL_T), ("large", "PROBS", LARGE_T)]

    def call(index: int) -> tuple[int, grpcclient.InferResult]:
        with grpcclient.InferenceServerClient(cascade_server.address) as own:
            if index % 4 == 3:  # direct calls to the stages ride in the same batches as the cascade's rows
                _infer(own, "small" if index % 8 == 3 else "large", requests[index])
            return index, _infer(own, "casc", requests[index], outputs)

    with ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(call, range(len(requests))))
    escalated_total = answered_small = 0
    for index, x in enumerate(requests):
        result = results[index]
        plan, answers = _expected(client, x, stages, [THRESHOLD])
        stage = result.as_numpy("CASCADE_STAGE").reshape(-1)
        confidence = result.as_numpy("CASCADE_CONFIDENCE").reshape(-1)
        near = np.abs(plan.confidence - THRESHOLD) < 1e-5  # float rounding may flip a row on the threshold
        assert result.as_numpy("CASCADE_STAGE").shape == (len(x), 1)
        np.testing.assert_array_equal(stage[~near], plan.stage[~near])
        for row, answering in enumerate(stage):
            for name in ("PROBS", "LOGITS"):
                np.testing.assert_allclose(result.as_numpy(name)[row], answers[answering][name][row], rtol=1e-5,
                                           atol=1e-6)
        np.testing.assert_allclose(confidence[~near], plan.confidence[~near], rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("CASCADE_PROBABILITIES")[~near], plan.probabilities[~near],
                                   rtol=1e-4, atol=1e-6)
        parameters = result.get_response().parameters
        escalated = int(np.sum(stage > 0))
        assert parameters["infergate_escalated_rows"].int64_param == escalated
        assert parameters["infergate_stage"].string_param == ("large" if escalated else "small")
        escalated_total += escalated
        answered_small += len(x) - escalated
    assert escalated_total > 50 and answered_small > 50  # the threshold splits the rows: both stages answer


def test_default_outputs_are_the_stages_and_the_cascade_ones_come_by_name(
        client: grpcclient.InferenceServerClient) -> None:
    result = _infer(client, "casc", _rows(np.random.default_rng(1), 3))
    assert [o.name for o in result.get_response().outputs] == ["PROBS", "LOGITS"]


@pytest.mark.parametrize(("cascade", "equals"), [("casc_zero", "small"), ("casc_one", "large")])
def test_edge_thresholds_equal_one_stage_row_for_row(client: grpcclient.InferenceServerClient, cascade: str,
                                                     equals: str) -> None:
    rng = np.random.default_rng(2)
    for count in (1, 5, MAX_BATCH):
        x = _rows(rng, count)
        result = _infer(client, cascade, x, ["PROBS", "LOGITS", "CASCADE_STAGE"])
        alone = _infer(client, equals, x)
        for name in ("PROBS", "LOGITS"):
            np.testing.assert_allclose(result.as_numpy(name), alone.as_numpy(name), rtol=1e-6)
        assert set(result.as_numpy("CASCADE_STAGE").reshape(-1)) == {0 if equals == "small" else 1}


@pytest.mark.skipif(not has_torch(), reason="needs the torch extra")
def test_stages_with_other_tensor_names_answer_under_the_cascades(client: grpcclient.InferenceServerClient) -> None:
    x = _rows(np.random.default_rng(3), MAX_BATCH)
    result = _infer(client, "casc_torch", x, ["PROBS", "LOGITS", "CASCADE_STAGE"])
    plan, answers = _expected(client, x, [("small", "LOGITS", SMALL_T), ("torch_linear", "OUTPUT__1", 1.0)],
                              [THRESHOLD])
    np.testing.assert_array_equal(result.as_numpy("CASCADE_STAGE").reshape(-1), plan.stage)
    for row, answering in enumerate(plan.stage):
        np.testing.assert_allclose(result.as_numpy("PROBS")[row], answers[answering]["PROBS"][row], rtol=1e-5)


def _rows_at(cascade_server: ServerProcess, model: str) -> int:
    with grpcclient.InferenceServerClient(cascade_server.address) as own:
        stats = own.get_inference_statistics(model).model_stats
    return sum(s.inference_count for s in stats)


def test_a_row_escalated_after_its_deadline_is_not_computed(client: grpcclient.InferenceServerClient,
                                                            cascade_server: ServerProcess) -> None:
    x = _rows(np.random.default_rng(4), 2)
    started = time.monotonic()
    _infer(client, "casc_slow", x)  # warm, and how long the slow stage takes
    slow_s = time.monotonic() - started
    large_before = _rows_at(cascade_server, "large")
    with pytest.raises(InferenceServerException) as info:
        _infer(client, "casc_slow", x, client_timeout=slow_s / 3)
    assert "DEADLINE_EXCEEDED" in str(info.value.status())
    time.sleep(slow_s * 1.5)  # the slow stage finishes its batch; the cascade must not escalate
    assert _rows_at(cascade_server, "large") == large_before
    snapshot = _stats(cascade_server)
    rows = {r["stage"]: r for r in snapshot["models"] if r["model"] == "casc_slow"}
    assert rows["large"]["windows"]["all"]["inferences"] == 2  # only the warm request's rows reached it


def test_a_cancelled_request_is_not_escalated(cascade_server: ServerProcess) -> None:
    x = _rows(np.random.default_rng(5), 3)
    done = threading.Event()
    with grpcclient.InferenceServerClient(cascade_server.address) as own:
        started = time.monotonic()
        _infer(own, "casc_slow", x)  # warm, and how long the slow stage takes (tens of ms on a quiet host)
        slow_s = time.monotonic() - started
        large_before = _rows_at(cascade_server, "large")
        tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        future = own.async_infer("casc_slow", [tensor], callback=lambda result, error: done.set())
        time.sleep(slow_s / 4)  # cancelled while the slow stage still runs, whatever this host's speed
        future.cancel()
        assert done.wait(10)
    time.sleep(1.0)
    assert _rows_at(cascade_server, "large") == large_before


def test_metadata_and_config_describe_the_cascade(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("casc")
    assert metadata.platform == "infergate_cascade"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT0", "FP32", [-1, 16])]
    assert [t.name for t in metadata.outputs] == ["PROBS", "LOGITS", "CASCADE_PROBABILITIES", "CASCADE_STAGE",
                                                  "CASCADE_CONFIDENCE"]
    config = client.get_model_config("casc").config
    assert (config.platform, config.max_batch_size) == ("infergate_cascade", MAX_BATCH)


def test_bad_cascades_are_unavailable_with_their_reason_while_the_rest_serve(
        client: grpcclient.InferenceServerClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    reasons = {name: index[name].reason for name in index if name.startswith("casc_") and index[name].reason}
    folder = str(Path(reasons["casc_bad"].split(": ")[0]).parent.parent)
    assert reasons == {
        "casc_bad": f"{folder}/casc_bad/cascade.json: measure is \"median\", expected one of ['max_prob', 'margin', "
                    "'entropy']",
        "casc_self": f"{folder}/casc_self/cascade.json: stages[1].model 'casc_self' leads back to 'casc_self' "
                     "(casc_self -> casc_self), expected stages that are plain models or other cascades",
        "casc_inputs": f"{folder}/casc_inputs/cascade.json: stages[1].model 'small_narrow' input 'INPUT0' is FP32 [8], "
                       "expected FP32 [16] like the cascade's 'INPUT0'",
        "casc_widths": f"{folder}/casc_widths/cascade.json: stages[1].output 'LOGITS' of model 'small_3' has 3 "
                       "classes, expected 4 like stages[0]",
        "casc_missing": f"{folder}/casc_missing/cascade.json: stages[1].model 'nope': model 'nope' is not in the "
                        "model repository",
        "casc_threshold": f"{folder}/casc_threshold/cascade.json: stages[0].threshold is 1.5, expected a number in "
                          "[0, 1]",
    }
    assert not client.is_model_ready("casc_bad") and client.is_model_ready("casc")
    with pytest.raises(InferenceServerException) as info:
        _infer(client, "casc_bad", _rows(np.random.default_rng(6), 1))
    assert "UNAVAILABLE" in str(info.value.status()) and "cascade.json" in info.value.message()


def _stats(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{server.metrics_address}/stats.json", timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_live_view_has_a_row_per_stage_and_the_saving(client: grpcclient.InferenceServerClient,
                                                      cascade_server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        _infer(client, "casc", _rows(rng, MAX_BATCH))
    time.sleep(1.1)  # one fold interval
    rows = {r["stage"]: r for r in _stats(cascade_server)["models"] if r["model"] == "casc"}
    assert set(rows) == {"", "small", "large"}
    whole, small, large = rows[""]["windows"]["all"], rows["small"]["windows"]["all"], rows["large"]["windows"]["all"]
    assert small["inferences"] == whole["inferences"] and 0 < large["inferences"] < small["inferences"]
    assert small["answered_rows"] + large["answered_rows"] == whole["inferences"]
    assert small["escalation_rate"] == pytest.approx(large["inferences"] / small["inferences"])
    assert whole["cost_usd"] == pytest.approx(small["cost_usd"] + large["cost_usd"])
    assert whole["saving_ratio"] is not None and whole["saving_ratio"] < 1
    alone = rows[""]["last_stage_alone_cost_per_1k_inferences_usd"]  # large's cheapest warm-up row, priced
    assert alone > 0 and whole["saving_ratio"] == pytest.approx(1 - whole["cost_per_1k_inferences_usd"] / alone)
    with urllib.request.urlopen(f"http://{cascade_server.metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'infergate_cascade_stage_rows_total{model="casc",stage="small",version="1"}' in text
    assert 'infergate_request_duration_seconds_count{model="casc",stage="large",version="1"}' in text
    assert 'infergate_cascade_saving_ratio{model="casc",stage="",version="1"}' in text
    statistics = client.get_inference_statistics("casc").model_stats[0]
    assert statistics.inference_count == whole["inferences"]
    table = subprocess.run([sys.executable, "-m", "infergate.server", "stats", "--window", "all", "--address",
                            str(cascade_server.metrics_address)], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    rows_of = [line.split()[:4] for line in table.stdout.splitlines() if line.startswith("casc ")]
    assert rows_of == [["casc", "1", "-", "cascade"], ["casc", "1", "small", "cpu"], ["casc", "1", "large", "cpu"]]
    (line,) = [line for line in table.stdout.splitlines() if line.startswith("cascade casc v1: ")]
    assert "rows answered by small " in line and ", large " in line and "saving " in line


def test_stages_in_use_are_not_unloaded_or_reloaded(repository: Path) -> None:
    proc = start_server("--model-repository", str(repository), "--model-control-mode", "explicit")
    try:
        with grpcclient.InferenceServerClient(proc.address) as own:
            own.load_model("casc")  # loads its stages first, as Triton loads an ensemble's models
            assert own.is_model_ready("small") and own.is_model_ready("large")
            for action in (own.unload_model, own.load_model):
                with pytest.raises(InferenceServerException) as info:
                    action("small")
                assert "FAILED_PRECONDITION" in str(info.value.status())
                assert "is a stage of cascade(s) ['casc'], which are loaded; unload them first" in info.value.message()
            assert own.is_model_ready("casc")
            own.unload_model("casc")
            own.unload_model("small")
            assert not own.is_model_ready("small")
    finally:
        proc.stop()


PERF_ANALYZER = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER, reason="perf_analyzer not installed (set PERF_ANALYZER; see README)")
def test_perf_analyzer_loads_a_cascade_and_reads_its_statistics(cascade_server: ServerProcess) -> None:
    assert PERF_ANALYZER is not None
    result = subprocess.run([PERF_ANALYZER, "-i", "grpc", "-u", cascade_server.address, "-m", "casc", "-b", "4",
                             "--concurrency-range", "4", "-p", "500", "--max-trials", "4", "-s", "100"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Inference count: [1-9]\d*", result.stdout)
    assert re.search(r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ compute input",
                     result.stdout)
