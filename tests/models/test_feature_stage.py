"""FeatureStage: declarations validated against the model's inputs, and batches assembled through the kernels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergate import kernels
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.errors import ConfigError, InvalidInput
from infergate.models.features import FORMAT, build_stage, find_declaration
from infergate.proto import model_config_pb2 as mc


def _spec(*inputs: TensorSpec, max_batch_size: int = 8, parameters: dict[str, str] | None = None) -> ModelSpec:
    return ModelSpec("m", "onnxruntime_onnx", max_batch_size, list(inputs), [TensorSpec("OUT", "FP32", (2,))],
                     mc.ModelConfig(name="m"), parameters or {})


def _scale(width: int, output_dtype: str = "float32") -> dict[str, Any]:
    ops = [kernels.Standardize(tuple(range(width)), mean=(1.0,) * width, scale=(2.0,) * width)]
    return kernels.Pipeline(ops, width, output_dtype=output_dtype).to_config()


def _hash(width: int) -> dict[str, Any]:
    return kernels.TokenHasher(width).to_config()


def test_long_form_concatenates_sources_and_passes_other_inputs_through() -> None:
    spec = _spec(TensorSpec("X", "FP32", (7,)), TensorSpec("MASK", "INT32", (2,)))
    stage = build_stage(spec, "test", {"format": FORMAT, "inputs": {"X": [
        {"name": "num", "transform": _scale(3)}, {"name": "words", "transform": _hash(4)}]}})
    assert [(t.name, t.datatype, t.dims) for t in stage.client_inputs] == [
        ("num", "FP32", (3,)), ("words", "BYTES", (-1,)), ("MASK", "INT32", (2,))]
    num = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = np.array([[b"a", b"b"], [b"c", b"a"]], dtype=object)
    mask = np.ones((2, 2), np.int32)
    out = stage.assemble([{"num": num[:1], "words": words[:1], "MASK": mask[:1]},
                          {"num": num[1:], "words": np.array([[b"c", b"a", b"a"]], dtype=object), "MASK": mask[1:]}])
    assert out["X"].shape == (2, 7) and out["X"].dtype == np.float32
    np.testing.assert_allclose(out["X"][:, :3], (num - 1.0) / 2.0)
    hasher = kernels.TokenHasher(4)
    np.testing.assert_array_equal(out["X"][:, 3:], hasher.transform([[b"a", b"b"], [b"c", b"a", b"a"]]))
    np.testing.assert_array_equal(out["MASK"], mask)


def test_short_form_feeds_the_only_input_of_an_unbatched_model() -> None:
    stage = build_stage(_spec(TensorSpec("X", "FP64", (3,)), max_batch_size=0), "test", _scale(3, "float64"))
    assert [(t.name, t.datatype) for t in stage.client_inputs] == [("X", "FP32")]
    out = stage.assemble([{"X": np.array([1.0, 3.0, 5.0], np.float32)}])
    np.testing.assert_allclose(out["X"], [0.0, 1.0, 2.0])
    assert out["X"].shape == (3,) and out["X"].dtype == np.float64
    assert stage.warm_up(1) < 1.0  # zeros without a batch dim are a valid input


def test_request_errors_name_the_raw_input_column_and_value() -> None:
    stage = build_stage(_spec(TensorSpec("X", "FP32", (3,))), "test", _scale(3))
    bad = np.array([[0.0, np.inf, 1.0]], np.float32)
    with pytest.raises(InvalidInput, match=r"model 'm' input 'X': input column 1 is inf at row 0"):
        stage.assemble([{"X": bad}])


@pytest.mark.parametrize(("inputs", "declaration", "message"), [
    ((TensorSpec("X", "FP32", (3,)), TensorSpec("Y", "FP32", (3,))), "short", "a model with one input"),
    ((TensorSpec("X", "FP32", (4,)),), "short", "takes 4 features per row, but its transforms produce 3 (X) = 3"),
    ((TensorSpec("X", "FP64", (3,)),), "short", "outputs float32, but model input 'X' is FP64"),
    ((TensorSpec("X", "INT32", (3,)),), "short", "transforms feed FP32 or FP64 inputs"),
    ((TensorSpec("X", "FP32", (3,)),), {"format": FORMAT, "inputs": {"Z": [{"name": "a", "transform": _scale(3)}]}},
     "'inputs' names 'Z', which is not an input of the model"),
    ((TensorSpec("X", "FP32", (3,)),), {"format": FORMAT, "inputs": {"X": [
        {"name": "a", "datatype": "BYTES", "transform": None}]}}, "'transform' must be a kernels"),
    ((TensorSpec("X", "FP32", (3,)),), {"format": FORMAT, "inputs": {"X": [
        {"name": "a", "datatype": "INT8", "transform": "pipeline"}]}}, "'transform' must be"),
    ((TensorSpec("X", "FP32", (4,)),), {"format": FORMAT, "inputs": {"X": [
        {"name": "a", "datatype": "FP32", "transform": {"kind": "hash", "n_features": 4}}]}},
     "'datatype' is 'FP32'; a TokenHasher takes BYTES"),
    ((TensorSpec("X", "FP32", (6,)), TensorSpec("a", "FP32", (3,))), {"format": FORMAT, "inputs": {"X": [
        {"name": "a", "transform": _scale(3)}, {"name": "c", "transform": _scale(3)}]}}, "['a'] are used twice"),
    ((TensorSpec("X", "FP32", (3,)),), {"format": FORMAT, "inputs": {"X": []}}, "non-empty list of sources"),
    ((TensorSpec("X", "FP32", (3,)),), {"format": FORMAT, "input": {}}, "unknown field(s) input"),
    ((TensorSpec("X", "FP32", (3,)),), {"kind": "pipeline", "n_features_in": 3, "steps": [{"op": "sqrt"}]},
     "unknown op 'sqrt'"),
])
def test_bad_declarations_are_config_errors(inputs: tuple[TensorSpec, ...], declaration: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_stage(_spec(*inputs), "test", _scale(3) if declaration == "short" else declaration)
    assert message in raised.value.message


def test_declaration_found_beside_the_model_by_parameter_or_inline(tmp_path: Path) -> None:
    assert find_declaration(_spec(), tmp_path) is None
    (tmp_path / kernels.PIPELINE_FILENAME).write_text(json.dumps(_scale(3)))
    assert find_declaration(_spec(), tmp_path) == (str(tmp_path / kernels.PIPELINE_FILENAME), _scale(3))
    inline = _spec(parameters={"feature_pipeline": json.dumps(_scale(2))})
    assert find_declaration(inline, tmp_path) == ("parameter 'feature_pipeline'", _scale(2))
    with pytest.raises(ConfigError, match="inside the model's folder"):
        find_declaration(_spec(parameters={"feature_pipeline": "../elsewhere.json"}), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find_declaration(_spec(parameters={"feature_pipeline": "missing.json"}), tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object, not list"):
        find_declaration(_spec(parameters={"feature_pipeline": "list.json"}), tmp_path)
