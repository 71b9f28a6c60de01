"""`infergate calibrate` and `infergate cascade tune` on real ONNX models in a temporary repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infergate.cascade.calibration import fit_temperature, read_calibration
from infergate.cascade.config import read_cascade_config
from infergate.cascade.splits import stratified_split
from infergate.models.config import build_spec, read_config
from infergate.server.cli import main

FEATURES, CLASSES, ROWS = 8, 4, 600
SMALL_NAMES = ("INPUT0", "PROBS", "LOGITS")  # (input, probabilities, logits) tensor names
LARGE_NAMES = ("INPUT__0", "OUTPUT__0", "OUTPUT__1")  # TorchScript-style names: matched by position
REPORT_KEYS = {"cascade", "measure", "max_accuracy_drop", "tuning_rows", "evaluation_rows", "stages", "tuning",
               "evaluation"}


def _classifier(model_dir: Path, weights: np.ndarray, bias: np.ndarray, names: tuple[str, str, str] = SMALL_NAMES,
                features: int = FEATURES, extra_top: bool = False, is_softmax: bool = True) -> None:
    """An ONNX linear classifier: input FP32 [b, features] -> probabilities (or, unless `is_softmax`, negated
    logits) and logits FP32 [b, classes] (and TOP, the top logit, FP32 [b, 1], when `extra_top`), with its
    config.pbtxt."""
    source, probs, logits = names
    classes = weights.shape[1]
    nodes = [helper.make_node("Gemm", [source, "W", "B"], [logits]),
             helper.make_node("Softmax", [logits], [probs], axis=1) if is_softmax
             else helper.make_node("Neg", [logits], [probs])]
    outputs = [(probs, classes), (logits, classes)]
    if extra_top:
        nodes.append(helper.make_node("ReduceMax", [logits], ["TOP"], axes=[1], keepdims=1))
        outputs.append(("TOP", 1))
    graph = helper.make_graph(
        nodes, model_dir.name, [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in outputs],
        [numpy_helper.from_array(weights.astype(np.float32), "W"),
         numpy_helper.from_array(bias.astype(np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    tensors = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {w} ] }}' for n, w in outputs)
    (model_dir / "config.pbtxt").write_text(
        f'name: "{model_dir.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 32\n'
        f'input [\n  {{ name: "{source}" data_type: TYPE_FP32 dims: [ {features} ] }}\n]\noutput [\n{tensors}\n]\n')


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true weights, rows, labels): labels drawn from softmax of the true logits, so no model is perfect."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0.0, 1.5, (FEATURES, CLASSES))
    x = rng.normal(0.0, 1.0, (ROWS, FEATURES)).astype(np.float32)
    logits = x @ weights
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) < rng.random((ROWS, 1))).sum(axis=1).clip(0, CLASSES - 1)
    return weights, x, y.astype(np.int64)


@pytest.fixture
def repo(tmp_path: Path, truth: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
    """small (noisy weights, overconfident; small_top with a TOP output too), large (the true weights, other
    tensor names), and misfits."""
    weights, _, _ = truth
    rng = np.random.default_rng(8)
    repo = tmp_path / "repo"
    small_weights = (weights + rng.normal(0.0, 1.0, weights.shape)) * 2.0
    _classifier(repo / "small", small_weights, np.zeros(CLASSES))
    _classifier(repo / "small_top", small_weights, np.zeros(CLASSES), extra_top=True)
    _classifier(repo / "large", weights, np.zeros(CLASSES), LARGE_NAMES)
    _classifier(repo / "three_classes", weights[:, :3], np.zeros(3))
    _classifier(repo / "wide_input", np.zeros((FEATURES + 2, CLASSES)), np.zeros(CLASSES), features=FEATURES + 2)
    _classifier(repo / "constant", np.zeros((FEATURES, CLASSES)), np.array([2.0, 0.0, 0.0, 0.0]))
    return repo


@pytest.fixture
def data(tmp_path: Path, truth: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
    _, x, y = truth
    path = tmp_path / "data.npz"
    np.savez(path, INPUT0=x, y=y)
    return path


def _logits(truth: tuple[np.ndarray, np.ndarray, np.ndarray], repo: Path, name: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = SMALL_NAMES if name != "large" else LARGE_NAMES
    return session.run([names[2]], {names[0]: truth[1]})[0].astype(np.float64)  # type: ignore[no-any-return]


def test_calibrate_writes_the_fitted_temperature(repo: Path, data: Path, tmp_path: Path,
                                                 truth: tuple[np.ndarray, np.ndarray, np.ndarray],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["calibrate", "--model-repository", str(repo), "--model", "small", "--data", str(data),
                 "--out", str(out)]) == 0
    expected = fit_temperature(_logits(truth, repo, "small"), truth[2], "logits")
    doc = json.loads((repo / "small" / "calibration.json").read_text())
    assert (doc["model"], doc["version"], doc["output"], doc["output_kind"]) == ("small", 1, "LOGITS", "logits")
    assert doc["temperature"] == pytest.approx(expected.temperature, rel=1e-5)
    assert doc["temperature"] > 1.0  # the small model's logits were doubled: overconfident
    assert read_calibration(repo / "small" / "calibration.json").after.ece < expected.before.ece
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["temperature"] == doc["temperature"] and report["n_rows"] == ROWS
    assert (out / "reliability_diagram.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "T = " in printed and "ece" in printed and str(repo / "small" / "calibration.json") in printed


def test_calibrate_detects_probabilities(repo: Path, data: Path, tmp_path: Path) -> None:
    assert main(["calibrate", "--model-repository", str(repo), "--model", "small", "--data", str(data),
                 "--output", "PROBS", "--out", str(tmp_path / "r")]) == 0
    doc = json.loads((repo / "small" / "calibration.json").read_text())
    assert (doc["output"], doc["output_kind"]) == ("PROBS", "probabilities")


def test_tune_writes_a_cascade_model_tuned_and_reported_on_disjoint_rows(
    repo: Path, data: Path, tmp_path: Path, truth: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    out = tmp_path / "tune"
    assert main(["cascade", "tune", "--model-repository", str(repo), "--name", "both", "--stages", "small,large",
                 "--data", str(data), "--max-accuracy-drop", "0.02", "--out", str(out)]) == 0
    spec = build_spec(read_config(repo / "both"), repo / "both")
    assert (spec.platform, spec.max_batch_size) == ("infergate_cascade", 32)
    assert [t.name for t in spec.inputs] == ["INPUT0"]
    assert [t.name for t in spec.outputs][:2] == ["PROBS", "LOGITS"]
    config = read_cascade_config(repo / "both" / "cascade.json")
    small, large = config.stages
    assert (small.model, small.output, large.model, large.output) == ("small", "LOGITS", "large", "OUTPUT__1")
    assert large.inputs == (("INPUT0", "INPUT__0"),)
    assert dict(large.outputs) == {"PROBS": "OUTPUT__0", "LOGITS": "OUTPUT__1"}
    report = json.loads((out / "tune_report.json").read_text())
    assert set(report) >= REPORT_KEYS and report["refused"] is None
    tuning_rows, evaluation_rows = stratified_split(truth[2], [0.5, 0.5], 0)
    assert not set(tuning_rows) & set(evaluation_rows)
    assert (report["tuning_rows"], report["evaluation_rows"]) == (len(tuning_rows), len(evaluation_rows))
    # Each stage's T was fitted on the tuning rows only, and written where the model is.
    for stage, name in zip(config.stages, ("small", "large")):
        fitted = fit_temperature(_logits(truth, repo, name)[tuning_rows], truth[2][tuning_rows], "logits")
        assert stage.temperature == pytest.approx(fitted.temperature, rel=1e-5)
        assert read_calibration(repo / name / "calibration.json").temperature == stage.temperature
    assert [s["threshold"] for s in report["stages"]] == [small.threshold, None]
    assert all(s["cost_per_inference_usd"] > 0 and "measured in-process" in s["cost_source"]
               for s in report["stages"])
    evaluation = report["evaluation"]
    assert evaluation["accuracy_drop"] == pytest.approx(evaluation["reference_accuracy"]
                                                        - evaluation["cascade"]["accuracy"])
    assert sum(evaluation["cascade"]["answered_fraction"]) == pytest.approx(1.0)
    assert {"ece_before", "ece_after", "nll_before", "nll_after", "brier_before", "brier_after"} <= set(
        evaluation["stages"][0])
    assert (out / "accuracy_cost.png").stat().st_size > 0
    # A second run overwrites the cascade it wrote, and reuses the calibrations.
    assert main(["cascade", "tune", "--model-repository", str(repo), "--name", "both", "--stages", "small,large",
                 "--data", str(data), "--eval-data", str(data), "--out", str(out)]) == 0
    again = json.loads((out / "tune_report.json").read_text())
    assert [s["calibration"] for s in again["stages"]] == ["read from calibration.json"] * 2
    assert again["evaluation_rows"] == again["tuning_rows"] == ROWS


def test_tune_refuses_a_cascade_whose_small_stage_answers_nothing(
    repo: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # constant's rows are all alike (one confidence, one class), and too rarely right to answer any of them.
    (repo / "constant" / "calibration.json").write_text(json.dumps(
        {"output": "LOGITS", "temperature": 1.0, "output_kind": "logits", "n_rows": 1, "n_classes": 4,
         "before": {"accuracy": 0, "nll": 0, "brier": 0, "ece": 0},
         "after": {"accuracy": 0, "nll": 0, "brier": 0, "ece": 0}}))
    out = tmp_path / "tune"
    assert main(["cascade", "tune", "--model-repository", str(repo), "--name", "never", "--stages",
                 "constant,large", "--data", str(data), "--out", str(out)]) == 1
    assert not (repo / "never").exists()
    report = json.loads((out / "tune_report.json").read_text())
    assert report["stages"][0]["threshold"] is None and report["written"] == []
    assert "stage 0 ('constant') answers no row" in report["refused"]
    assert "not confident enough for the allowed drop" in capsys.readouterr().out


BAD_TUNE = [
    (["--stages", "small,missing"], "--stages: model 'missing' is not in the model repository"),
    (["--stages", "small,large", "--name", "small"],
     "--stages 'small,large' names 'small', the cascade itself; expected other models"),
    (["--name", "wide_input"], "platform 'onnxruntime_onnx', expected 'infergate_cascade': 'wide_input' is a plain "
                               "model, refusing to overwrite it"),
    (["--max-accuracy-drop", "1.5"], "--max-accuracy-drop is 1.5, expected a number in [0, 1]"),
    (["--stages", "small,three_classes"], "output 'PROBS' is FP32 [3], expected FP32 [4] like the cascade's 'PROBS'"),
    (["--stages", "small,wide_input"], "input 'INPUT0' is FP32 [10], expected FP32 [8] like the cascade's 'INPUT0'"),
    (["--stages", "small,small_top", "--outputs", "LOGITS,TOP"],
     "model 'small_top' output 'TOP' is FP32 [1], expected FP32 [classes] with at least 2 classes"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_TUNE)
def test_tune_refuses_bad_input_in_one_line(repo: Path, data: Path, tmp_path: Path, flags: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    defaults = {"--name": "both", "--stages": "small,large"}
    for flag, value in zip(flags[::2], flags[1::2]):
        defaults[flag] = value
    argv = ["cascade", "tune", "--model-repository", str(repo), "--data", str(data), "--out", str(tmp_path / "o")]
    assert main(argv + [item for pair in defaults.items() for item in pair]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in error if "infergate cascade tune: error:" in line]) == 1
    assert message in error[-1]
    assert "Traceback" not in "\n".join(error)


def _bad_data(tmp_path: Path, truth: tuple[np.ndarray, np.ndarray, np.ndarray], case: str) -> Path:
    _, x, y = truth
    arrays = {"INPUT0": x, "y": y}
    if case == "float labels":
        arrays["y"] = np.where(np.arange(ROWS) == 0, 0.5, y)
    elif case == "label too high":
        arrays["y"] = np.where(np.arange(ROWS) == 3, CLASSES, y)
    elif case == "no input":
        arrays = {"X": x, "y": y}
    elif case == "no labels":
        arrays = {"INPUT0": x}
    elif case == "rows disagree":
        arrays["y"] = y[:-1]
    path = tmp_path / f"{case.replace(' ', '_')}.npz"
    np.savez(path, **arrays)
    return path


BAD_DATA = [
    ("float labels", "y has 0.5 at row 0, expected integer class indices"),
    ("label too high", "y has 4 at row 3, expected class indices in [0, 4)"),
    ("no input", "has no array 'INPUT0', expected arrays named after model 'small''s inputs (INPUT0) and 'y'"),
    ("no labels", "has no array 'y', expected arrays named after model 'small''s inputs"),
    ("rows disagree", "INPUT0 has 600 rows, expected 599 like"),
]


@pytest.mark.parametrize(("case", "message"), BAD_DATA)
@pytest.mark.parametrize("command", ["calibrate", "tune"])
def test_bad_data_is_one_line_naming_the_file(repo: Path, tmp_path: Path, truth: tuple[np.ndarray, np.ndarray,
                                              np.ndarray], case: str, message: str, command: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad_data(tmp_path, truth, case)
    argv = (["calibrate", "--model", "small"] if command == "calibrate"
            else ["cascade", "tune", "--name", "both", "--stages", "small,large"])
    assert main([*argv, "--model-repository", str(repo), "--data", str(path), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(path) in error and message in error
    assert not (repo / "small" / "calibration.json").exists()


def test_calibrate_refuses_an_output_that_is_not_a_score_vector(repo: Path, data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--model-repository", str(repo), "--model", "small_top", "--data", str(data),
                 "--output", "TOP", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "infergate calibrate: error: model 'small_top' output 'TOP' is FP32 [1], expected FP32 [classes] with at least "
        "2 classes (a vector of logits or probabilities)")


def test_calibrate_names_the_outputs_when_it_cannot_choose(repo: Path, data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Two FP32 [4] outputs, neither named like logits nor holding probability rows.
    _classifier(repo / "two_scores", np.eye(FEATURES, CLASSES), np.zeros(CLASSES), ("INPUT0", "SCORE_A", "SCORE_B"),
                is_softmax=False)
    assert main(["calibrate", "--model-repository", str(repo), "--model", "two_scores", "--data", str(data),
                 "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "cannot tell which output to calibrate among SCORE_A FP32 [4], SCORE_B FP32 [4]" in error
    assert "pass --output NAME" in error


def test_target_runs_the_models_on_a_server(repo: Path, data: Path, tmp_path: Path,
                                            truth: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    from harness import start_server

    server = start_server("--model-repository", str(repo))
    try:
        out = tmp_path / "tune"
        assert main(["cascade", "tune", "--model-repository", str(repo), "--name", "both", "--stages",
                     "small,large", "--data", str(data), "--max-accuracy-drop", "0.02", "--out", str(out),
                     "--target", server.address]) == 0
    finally:
        server.stop()
    report = json.loads((out / "tune_report.json").read_text())
    assert all(f"server statistics at {server.address}" in s["cost_source"] and s["cost_per_inference_usd"] > 0
               for s in report["stages"])
    tuning_rows, _ = stratified_split(truth[2], [0.5, 0.5], 0)
    fitted = fit_temperature(_logits(truth, repo, "small")[tuning_rows], truth[2][tuning_rows], "logits")
    assert report["stages"][0]["temperature"] == pytest.approx(fitted.temperature, rel=1e-5)
    assert read_cascade_config(repo / "both" / "cascade.json").stages[1].output == "OUTPUT__1"


def test_an_unreachable_target_exits_1(repo: Path, data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--model-repository", str(repo), "--model", "small", "--data", str(data),
                 "--target", "127.0.0.1:1", "--out", str(tmp_path / "o")]) == 1
    assert "infergate calibrate: error: --target 127.0.0.1:1: ModelMetadata failed with UNAVAILABLE" in (
        capsys.readouterr().err)
