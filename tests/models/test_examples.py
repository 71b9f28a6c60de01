"""Tests for the built-in example repository: layout, configs, models, accuracy, determinism and build safety."""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from infergate.cascade.calibration import calibrated_probabilities, fit_temperature, read_calibration
from infergate.cascade.config import read_cascade_config
from infergate.cascade.routing import plan_cascade
from infergate.models import examples
from infergate.models.config import build_spec, read_config
from infergate.proto import model_config_pb2

HAS_TORCH = importlib.util.find_spec("torch") is not None
SMALL_MIN_ACCURACY = 0.9  # digits_small must beat this on the held-out rows
LARGE_MIN_ACCURACY = 0.95  # digits_large must beat this on the held-out rows
HELDOUT_ROWS = 540  # 30 % of the 1,797 digits images

# model name -> (platform, inputs, outputs); every tensor is FP32 [batch, width].
EXPECTED_MODELS = {
    "digits_small": ("onnxruntime_onnx", [("INPUT0", 64)], [("OUTPUT0", 10), ("LOGITS", 10)]),
    "identity": ("onnxruntime_onnx", [("INPUT0", 64)], [("OUTPUT0", 64)]),
    "digits_large": ("pytorch_libtorch", [("INPUT__0", 64)], [("OUTPUT__0", 10), ("OUTPUT__1", 10)]),
}


def expected_files(has_torch: bool) -> set[str]:
    """Returns the repository's files, relative to its root, for a build with or without torch."""
    files = {
        ".complete",
        "digits_small/config.pbtxt",
        "digits_small/1/model.onnx",
        "identity/config.pbtxt",
        "identity/1/model.onnx",
    }
    with_torch = {
        "digits_large/config.pbtxt",
        "digits_large/1/model.pt",
        "digits_small/calibration.json",
        "digits_large/calibration.json",
        "digits_cascade/config.pbtxt",
        "digits_cascade/cascade.json",
    }
    return files | (with_torch if has_torch else set())


def expected_data_files(has_torch: bool) -> set[str]:
    """Returns the data folder's files for a build with or without torch (the cascade needs digits_large)."""
    files = {"digits_heldout.npz", "accuracy.json"}
    return files | ({"digits_cascade_split.npz", "digits_cascade_eval.json"} if has_torch else set())


def file_bytes(root: Path) -> dict[str, bytes]:
    """Returns every file under root as {relative path: content}."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Returns row-wise softmax of logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def run_onnx(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Returns {output name: array} of the ONNX model at model_path run on INPUT0 = x."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"INPUT0": x}), strict=True))


def run_torchscript(model_path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (OUTPUT__0, OUTPUT__1) of the TorchScript model at model_path run on x."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        module = torch.jit.load(str(model_path))
    with torch.no_grad():
        probabilities, logits = module(torch.from_numpy(x))
    return probabilities.numpy(), logits.numpy()


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Returns the share of rows whose highest score is at the true label."""
    return float(np.mean(np.argmax(scores, axis=1) == labels))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return examples.build_example_repository(tmp_path_factory.mktemp("cache") / examples.REPOSITORY_VERSION)


@pytest.fixture(scope="module")
def heldout(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(examples.example_data_dir(repository) / examples.HELDOUT_FILE) as data:
        return data["X"], data["y"]


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(examples, "_is_torch_available", lambda: False)


def test_layout_is_triton_and_the_data_sits_beside_it(repository: Path) -> None:
    assert set(file_bytes(repository)) == expected_files(HAS_TORCH)
    assert {p.name for p in repository.parent.iterdir()} == {examples.REPOSITORY_VERSION, examples.DATA_DIR_NAME}
    data_dir = examples.example_data_dir(repository)
    assert data_dir == repository.parent / "example-data-v1"
    assert {p.name for p in data_dir.iterdir()} == expected_data_files(HAS_TORCH)
    assert (repository / ".complete").read_text().startswith("example-repository-v3")


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_config_parses_as_model_config(repository: Path, name: str) -> None:
    if name == "digits_large":
        pytest.importorskip("torch")
    platform, inputs, outputs = EXPECTED_MODELS[name]
    config = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == (name, platform, 64)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    for tensors, expected in ((config.input, inputs), (config.output, outputs)):
        assert [(t.name, t.data_type, list(t.dims)) for t in tensors] == [
            (n, model_config_pb2.TYPE_FP32, [width]) for n, width in expected
        ]


def test_heldout_split_is_scaled_digits(heldout: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = heldout
    assert (x.dtype, x.shape, y.dtype, y.shape) == (np.float32, (HELDOUT_ROWS, 64), np.int64, (HELDOUT_ROWS,))
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))


def test_digits_small_gives_probabilities_logits_and_accuracy(
    repository: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    outputs = run_onnx(repository / "digits_small" / "1" / "model.onnx", x)
    assert list(outputs) == ["OUTPUT0", "LOGITS"]
    probabilities, logits = outputs["OUTPUT0"], outputs["LOGITS"]
    assert probabilities.shape == logits.shape == (HELDOUT_ROWS, 10)
    assert probabilities.dtype == logits.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, softmax(logits), rtol=1e-5, atol=1e-7)
    assert accuracy(probabilities, y) > SMALL_MIN_ACCURACY
    assert run_onnx(repository / "digits_small" / "1" / "model.onnx", x[:1])["OUTPUT0"].shape == (1, 10)


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_identity_returns_its_input(repository: Path, rows: int) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    output = run_onnx(repository / "identity" / "1" / "model.onnx", x)
    assert list(output) == ["OUTPUT0"]
    np.testing.assert_array_equal(output["OUTPUT0"], x)


def test_digits_large_gives_probabilities_logits_and_accuracy(
    repository: Path, heldout: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    probabilities, logits = run_torchscript(repository / "digits_large" / "1" / "model.pt", x)
    assert probabilities.shape == logits.shape == (HELDOUT_ROWS, 10)
    assert probabilities.dtype == logits.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, softmax(logits), rtol=1e-5, atol=1e-7)
    assert accuracy(probabilities, y) > LARGE_MIN_ACCURACY
    assert run_torchscript(repository / "digits_large" / "1" / "model.pt", x[:1])[0].shape == (1, 10)


def test_accuracy_file_matches_the_models(repository: Path, heldout: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = heldout
    recorded = json.loads((examples.example_data_dir(repository) / "accuracy.json").read_text())
    assert set(recorded) == ({"digits_small", "digits_large"} if HAS_TORCH else {"digits_small"})
    small = run_onnx(repository / "digits_small" / "1" / "model.onnx", x)["OUTPUT0"]
    one_row = 1.5 / len(y)  # float rounding may flip a near-tie between two classes
    assert recorded["digits_small"] == pytest.approx(accuracy(small, y), abs=one_row)
    if HAS_TORCH:
        large, _ = run_torchscript(repository / "digits_large" / "1" / "model.pt", x)
        assert recorded["digits_large"] == pytest.approx(accuracy(large, y), abs=one_row)
        assert recorded["digits_large"] > recorded["digits_small"]


@pytest.fixture(scope="module")
def cascade_split(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    pytest.importorskip("torch")
    with np.load(examples.example_data_dir(repository) / "digits_cascade_split.npz") as data:
        return data["tuning_rows"], data["evaluation_rows"]


def test_digits_cascade_is_a_cascade_of_small_then_large(repository: Path) -> None:
    pytest.importorskip("torch")
    model_dir = repository / "digits_cascade"
    spec = build_spec(read_config(model_dir), model_dir)
    assert (spec.platform, spec.max_batch_size, spec.parameters) == ("infergate_cascade", 64,
                                                                      {"cascade_config": "cascade.json"})
    assert [(t.name, t.dims) for t in spec.inputs] == [("INPUT0", (64,))]
    assert [t.name for t in spec.outputs] == ["OUTPUT0", "LOGITS", "CASCADE_PROBABILITIES", "CASCADE_STAGE",
                                              "CASCADE_CONFIDENCE"]
    config = read_cascade_config(model_dir / "cascade.json")
    small, large = config.stages
    assert config.measure == "max_prob"
    assert (small.model, small.version, small.output, small.output_kind) == ("digits_small", 1, "LOGITS", "logits")
    assert (large.model, large.version, large.output, large.output_kind) == ("digits_large", 1, "OUTPUT__1", "logits")
    assert small.threshold is not None and 0.1 < small.threshold < 1.0
    assert (large.inputs, large.outputs) == ((("INPUT0", "INPUT__0"),),
                                             (("LOGITS", "OUTPUT__1"), ("OUTPUT0", "OUTPUT__0")))
    for stage in config.stages:  # the stages' calibration.json hold the temperatures cascade.json routes with
        calibration = read_calibration(repository / stage.model / "calibration.json")
        assert calibration.temperature == stage.temperature
        assert json.loads((repository / stage.model / "calibration.json").read_text())["output"] == stage.output


def test_digits_cascade_is_tuned_on_half_the_heldout_rows_and_evaluated_on_the_other(
    heldout: tuple[np.ndarray, np.ndarray], cascade_split: tuple[np.ndarray, np.ndarray]
) -> None:
    _, y = heldout
    tuning_rows, evaluation_rows = cascade_split
    assert not set(tuning_rows) & set(evaluation_rows)
    assert sorted([*tuning_rows, *evaluation_rows]) == list(range(HELDOUT_ROWS))
    assert abs(len(tuning_rows) - len(evaluation_rows)) <= 10  # a half of each class, rounded
    assert set(y[tuning_rows]) == set(y[evaluation_rows]) == set(range(10))


def test_digits_cascade_figures_are_what_its_models_do_on_the_evaluation_rows(
    repository: Path, heldout: tuple[np.ndarray, np.ndarray], cascade_split: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = heldout
    tuning_rows, rows = cascade_split
    config = read_cascade_config(repository / "digits_cascade" / "cascade.json")
    logits = [run_onnx(repository / "digits_small" / "1" / "model.onnx", x)["LOGITS"],
              run_torchscript(repository / "digits_large" / "1" / "model.pt", x)[1]]
    for scores, stage in zip(logits, config.stages):  # T was fitted on the tuning rows only
        fitted = fit_temperature(scores[tuning_rows], y[tuning_rows], "logits").temperature
        assert fitted == pytest.approx(stage.temperature, rel=1e-4)
    probabilities = [calibrated_probabilities(scores[rows], "logits", stage.temperature)
                     for scores, stage in zip(logits, config.stages)]
    plan = plan_cascade(probabilities, config.thresholds, config.measure)
    report = json.loads((examples.example_data_dir(repository) / "digits_cascade_eval.json").read_text())
    figures = report["evaluation"]
    one_row = 1.5 / len(rows)
    assert (report["tuning_rows"], report["evaluation_rows"]) == (len(tuning_rows), len(rows))
    assert figures["cascade"]["accuracy"] == pytest.approx(float(np.mean(plan.predictions == y[rows])), abs=one_row)
    assert figures["cascade"]["answered_fraction"] == pytest.approx(plan.answered_fraction(2), abs=one_row)
    assert figures["reference_accuracy"] == pytest.approx(accuracy(logits[1][rows], y[rows]), abs=one_row)
    assert figures["cascade"]["answered_fraction"][0] > 0.8  # the small model answers most rows
    assert figures["cascade"]["saving_fraction"] > 0.5
    assert figures["accuracy_drop"] <= 0.005 + 2 * one_row  # tuned within 0.005 on the other half
    small = figures["stages"][0]
    assert small["ece_after"] < small["ece_before"]  # digits_small is overconfident at T = 1


def test_second_build_into_the_same_dest_is_a_no_op(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in repository.parent.rglob("*")}

    def fail(*args: Any) -> None:
        raise AssertionError("rebuilt a complete repository")

    monkeypatch.setattr(examples, "_build", fail)
    assert examples.build_example_repository(repository) == repository
    assert {p: p.stat().st_mtime_ns for p in repository.parent.rglob("*")} == before


def test_builds_into_different_dirs_are_identical(
    repository: Path, heldout: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    second = examples.build_example_repository(tmp_path / examples.REPOSITORY_VERSION)
    first_files, second_files = file_bytes(repository.parent), file_bytes(second.parent)
    # TorchScript archives name classes by how many were traced before in the process; compare outputs instead.
    torchscript = f"{examples.REPOSITORY_VERSION}/digits_large/1/model.pt"
    assert set(first_files) == set(second_files)
    for path in sorted(set(first_files) - {torchscript}):
        assert first_files[path] == second_files[path], path
    if HAS_TORCH:
        x, _ = heldout
        for first, again in zip(
            run_torchscript(repository.parent / torchscript, x), run_torchscript(second.parent / torchscript, x)
        ):
            np.testing.assert_array_equal(first, again)


@pytest.mark.usefixtures("without_torch")
def test_without_torch_digits_large_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=examples.__name__):
        repository = examples.build_example_repository(tmp_path / "repo")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "digits_large and digits_cascade skipped: PyTorch is not installed (its CPU build: "
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
    ]
    assert set(file_bytes(repository)) == expected_files(has_torch=False)
    assert set(json.loads((tmp_path / "example-data-v1" / "accuracy.json").read_text())) == {"digits_small"}


def test_a_build_without_torch_is_replaced_once_torch_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    dest = tmp_path / "repo"
    with monkeypatch.context() as patch:
        patch.setattr(examples, "_is_torch_available", lambda: False)
        examples.build_example_repository(dest)
    examples.build_example_repository(dest)
    assert set(file_bytes(dest)) == expected_files(has_torch=True)
    assert set(json.loads((tmp_path / "example-data-v1" / "accuracy.json").read_text())) == {
        "digits_small",
        "digits_large",
    }
    assert {p.name for p in tmp_path.iterdir()} == {"repo", "example-data-v1"}


@pytest.mark.usefixtures("without_torch")
def test_an_incomplete_dest_is_rebuilt(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    (dest / "digits_small").mkdir(parents=True)
    (dest / "digits_small" / "config.pbtxt").write_text("truncated")
    examples.build_example_repository(dest)
    assert set(file_bytes(dest)) == expected_files(has_torch=False)
    assert (dest / "digits_small" / "config.pbtxt").read_text().startswith('name: "digits_small"')


@pytest.mark.usefixtures("without_torch")
def test_a_builder_that_loses_the_race_keeps_the_winners_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "repo"
    build = examples._build
    winner: list[tuple[int, int]] = []  # inode numbers of the repository and data folders the other builder placed

    def build_while_another_builder_finishes(repository: Path, data_dir: Path, has_torch: bool) -> None:
        build(repository, data_dir, has_torch)
        if not winner:  # the first (outer) builder: another one finishes before this one publishes
            winner.append((0, 0))
            examples.build_example_repository(dest)
            winner[0] = (dest.stat().st_ino, (tmp_path / "example-data-v1").stat().st_ino)

    monkeypatch.setattr(examples, "_build", build_while_another_builder_finishes)
    assert examples.build_example_repository(dest) == dest
    assert (dest.stat().st_ino, (tmp_path / "example-data-v1").stat().st_ino) == winner[0]
    assert set(file_bytes(dest)) == expected_files(has_torch=False)
    assert {p.name for p in tmp_path.iterdir()} == {"repo", "example-data-v1"}  # no staging folder left


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"INFERGATE_CACHE_DIR": "/explicit", "XDG_CACHE_HOME": "/xdg"}, "/explicit"),
        ({"INFERGATE_CACHE_DIR": "", "XDG_CACHE_HOME": "/xdg"}, "/xdg/infergate"),
        ({"XDG_CACHE_HOME": ""}, "/home/someone/.cache/infergate"),
    ],
)
def test_default_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("INFERGATE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/home/someone")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert examples.default_cache_dir() == Path(expected)
    assert examples.default_repository_dir() == Path(expected) / "example-repository-v3"
