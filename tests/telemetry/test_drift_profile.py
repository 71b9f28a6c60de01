"""`infergate drift-profile` writes a profile only from rows that fit the model, and never spoils a good one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infergate.server.cli import main
from infergate.server.telemetry import drift

from modelgen import write

CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {dims} ] }},
        {{ name: "MASK", data_type: TYPE_FP32, dims: [ 2, 3 ] }} ]
output [ {{ name: "PROBS", data_type: TYPE_FP32, dims: [ 4 ] }} ]
"""


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    for name, dims in (("model", "16"), ("ragged", "-1")):
        write(tmp_path / "repo" / name / "config.pbtxt", CONFIG.format(dims=dims))
        (tmp_path / "repo" / name / "1").mkdir()
    return tmp_path / "repo"


def _run(capsys: pytest.CaptureFixture[str], model_dir: Path, data: np.ndarray | Path, *flags: str) -> tuple[int, str]:
    path = data if isinstance(data, Path) else model_dir.parent.parent / "train.npy"
    if not isinstance(data, Path):
        np.save(path, data)
    code = main(["drift-profile", "--model-dir", str(model_dir), "--data", str(path), *flags])
    captured = capsys.readouterr()
    return code, captured.err or captured.out


def _rows(features: int, rows: int = 500) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, features)).astype(np.float32)


def test_a_good_profile_is_written(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, repository / "model", _rows(16))
    assert code == 0, out
    profile = repository / "model" / drift.PROFILE_FILE
    assert out == f"{profile}: input 'INPUT0', 16 features, 500 rows, up to 10 bins each\n"
    code, out = _run(capsys, repository / "model", _rows(6).reshape(500, 2, 3), "--input", "MASK")
    assert code == 0 and "input 'MASK', 6 features" in out
    assert drift.load_profile(profile).input == "MASK"


@pytest.mark.parametrize(("data", "flags", "error"), [
    (_rows(3), (), "--data {data}: 3 features per row (shape [500, 3]), but input 'INPUT0' of model 'model' takes "
                   "16 (dims [16])"),
    (_rows(16).reshape(500, 4, 4)[:, :3], (), "--data {data}: 12 features per row (shape [500, 3, 4]), but input "
                                               "'INPUT0' of model 'model' takes 16 (dims [16])"),
    (_rows(16), ("--input", "MASK"), "--data {data}: 16 features per row (shape [500, 16]), but input 'MASK' of "
                                     "model 'model' takes 6 (dims [2, 3])"),
    (_rows(16), ("--input", "INPUT1"), "--input 'INPUT1': not an input of model 'model' (its inputs: INPUT0, MASK)"),
    (np.zeros((0, 16), np.float32), (), "--data {data}: the training data has no rows"),
    (np.array(3.0), (), "--data {data}: expected an array [rows, features], not a single value"),
    (np.array([["a"] * 16] * 4), (), "--data {data}: dtype <U1; expected real numbers"),
    (np.where(np.arange(16) == 7, np.nan, _rows(16)), (), "--data {data}: feature 7: no finite values"),
    (_rows(16), ("--bins", "1"), "--bins 1: expected at least 2"),
])
def test_bad_data_is_refused_and_the_good_profile_kept(repository: Path, capsys: pytest.CaptureFixture[str],
                                                       data: np.ndarray, flags: tuple[str, ...], error: str) -> None:
    assert _run(capsys, repository / "model", _rows(16))[0] == 0
    profile = repository / "model" / drift.PROFILE_FILE
    good = profile.read_bytes()
    code, err = _run(capsys, repository / "model", data, *flags)
    assert code == 2
    assert err == (f"infergate drift-profile: {error.format(data=repository.parent / 'train.npy')}; "
                   f"{profile} is unchanged\n")
    assert profile.read_bytes() == good


def test_variable_dims_cannot_be_profiled(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, repository / "ragged", _rows(16))
    assert code == 2
    assert err == (f"infergate drift-profile: --data {repository.parent / 'train.npy'}: input 'INPUT0' of model "
                   "'ragged' has variable dims [-1]: drift monitoring needs fixed ones\n")
    assert not (repository / "ragged" / drift.PROFILE_FILE).exists()


def test_the_repository_root_is_not_a_model(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, repository, _rows(16))
    assert code == 2
    assert err == (f"infergate drift-profile: --model-dir {repository}: a model repository, not a model's folder "
                   f"(it has no config.pbtxt); expected one of its models: --model-dir {repository / 'model'}, "
                   "or another of model, ragged\n")
    assert not (repository / drift.PROFILE_FILE).exists()


def test_an_unreadable_data_file_is_named(repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, repository / "model", repository / "nothing.npy")
    assert code == 2
    assert err.startswith(f"infergate drift-profile: cannot read --data {repository / 'nothing.npy'}: ")
