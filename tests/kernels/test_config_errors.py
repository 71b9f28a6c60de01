"""Configs round-trip through JSON and files; bad configs and bad batches fail with named fields and values."""

import json

import numpy as np
import pytest

from infergate import kernels as K


def test_config_round_trip(tmp_path, backend: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    X[::9, 1] = np.nan
    pipeline = K.fit(X, [{"op": "impute", "strategy": "median"}, {"op": "standardize"},
                         {"op": "clip", "low": -2, "high": 2}, {"op": "bucketize", "columns": [0], "n_bins": 3},
                         {"op": "onehot", "columns": [0]}], backend=backend)
    path = pipeline.save(tmp_path)
    assert path.name == K.PIPELINE_FILENAME
    loaded = K.load(tmp_path, backend=backend)
    assert loaded.to_config() == pipeline.to_config()
    assert json.loads(json.dumps(pipeline.to_config())) == pipeline.to_config()
    np.testing.assert_array_equal(loaded.transform(X), pipeline.transform(X))
    hasher = K.TokenHasher(16)
    assert K.from_config(json.dumps(hasher.to_config())).to_config() == hasher.to_config()


@pytest.mark.parametrize("config, match", [
    ({"n_features_in": 2, "steps": [{"op": "frobnicate"}]}, r"steps\[0\]: unknown op 'frobnicate'"),
    ({"n_features_in": 2, "steps": [{"op": "bucketize", "boundaries": [[1, 0]]}]},
     r"steps\[0\]\.boundaries\[0\]: not sorted: 1.0 then 0.0 at index 1"),
    ({"n_features_in": 2, "steps": [{"op": "standardize", "mean": [0, 0], "scale": [1, 0]}]},
     r"steps\[0\]\.scale\[1\]: scale must not be zero"),
    ({"n_features_in": 2, "steps": [{"op": "clip", "columns": [5], "low": 0, "high": 1}]},
     r"steps\[0\]\.columns: column 5 is out of range for 2 columns"),
    ({"n_features_in": 2, "steps": [{"op": "impute", "values": [1, 2, 3]}]}, r"steps\[0\]\.values: has 3 entries"),
    ({"n_features_in": 0, "steps": []}, "n_features_in: expected a positive integer"),
    ({"kind": "hash", "n_features": 0}, "hash width must be an integer"),
    ({"n_features_in": 2, "steps": [], "colour": 1}, "unknown field"),
    ({"n_features_in": 2, "steps": [], "exact": 1}, "exact: expected true or false, got 1"),
])
def test_bad_configs(config: dict, match: str) -> None:
    with pytest.raises(K.ConfigError, match=match) as info:
        K.from_config(config)
    assert isinstance(info.value, K.KernelError) and isinstance(info.value, ValueError)


def test_bad_batches(backend: str) -> None:
    pipeline = K.Pipeline([K.Standardize(None, (0.0,), (1.0,))], 3, backend=backend)
    with pytest.raises(K.ShapeError, match=r"input has shape \(2, 4\); expected \(batch, 3\)"):
        pipeline.transform(np.zeros((2, 4)))
    with pytest.raises(K.ShapeError, match="2 dimensions"):
        pipeline.transform(np.zeros(3))
    with pytest.raises(K.InputTypeError, match="non-numeric input at row 1, column 2: 'x'"):
        pipeline.transform(np.array([[1, 2, 3], [4, 5, "x"]], dtype=object))
    with pytest.raises(K.InputTypeError, match="non-numeric input of dtype <U1"):
        pipeline.transform(np.array([["a", "b", "c"]]))
    with pytest.raises(K.NonFiniteInputError, match="input column 1 is -inf at row 0"):
        pipeline.transform(np.array([[0.0, -np.inf, 0.0]]))
    with pytest.raises(K.NonFiniteOutputError, match=r"output column 2 \(from input column 2\) is nan at row 1"):
        pipeline.transform(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.nan]]))
    np.testing.assert_array_equal(pipeline.transform(np.array([[1, 2, 3]])), [[1, 2, 3]])  # ints widen
    assert pipeline.transform(np.zeros((0, 3), np.float32)).shape == (0, 3)
    out = np.empty((1, 3), np.float32)
    assert pipeline.transform(np.ones((1, 3)), out=out) is out


def test_unknown_backend() -> None:
    with pytest.raises(K.ConfigError, match="unknown backend 'gpu'"):
        K.Pipeline([], 1, backend="gpu")
