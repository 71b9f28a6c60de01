"""Every backend equals the NumPy reference: each op, random pipelines, shapes, dtypes, layouts, NaN/inf."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import COMPILED, assert_same, numeric_ops, run_all

from infergate import kernels as K

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def op_lists(draw: st.DrawFn, d: int) -> list:
    """A random pipeline over d columns; one-hot only last (its categories are the small integers 0..3)."""
    ops: list = []
    floats = st.floats(-3, 3, allow_nan=False)
    for _ in range(draw(st.integers(0, 5))):
        cols = tuple(sorted(draw(st.sets(st.integers(0, d - 1), min_size=1))))
        kind = draw(st.sampled_from(["impute", "standardize", "minmax", "clip", "log1p", "bucketize"]))
        n = len(cols)
        if kind == "impute":
            ops.append(K.Impute(cols, tuple(draw(st.lists(floats, min_size=n, max_size=n)))))
        elif kind == "standardize":
            ops.append(K.Standardize(cols, tuple(draw(st.lists(floats, min_size=n, max_size=n))),
                                     tuple(draw(st.lists(st.floats(0.1, 5), min_size=n, max_size=n)))))
        elif kind == "minmax":
            ops.append(K.MinMax(cols, (draw(st.floats(-2, 2)),), (draw(floats),)))
        elif kind == "clip":
            low = draw(st.floats(-3, 0))
            ops.append(K.Clip(cols, (low,), (low + draw(st.floats(0, 4)),)))
        elif kind == "log1p":
            ops.append(K.Log1p(cols))
        else:
            edges = tuple(tuple(sorted(draw(st.lists(floats, max_size=4)))) for _ in cols)
            ops.append(K.Bucketize(cols, edges))
    if draw(st.booleans()):
        ops.append(K.Select(tuple(draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=d + 2)))))
        d = len(ops[-1].columns)
    if draw(st.booleans()):
        col = draw(st.integers(0, d - 1))
        ops.append(K.OneHot((col,), ((0.0, 1.0, 2.0, 3.0),), draw(st.sampled_from(["error", "ignore"])),
                            (draw(st.integers(-1, 3)),)))
    return ops


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.sampled_from([0, 1, 2, 7, 300]))
    d = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(scale=draw(st.sampled_from([1.0, 1e3])), size=(n, d))
    if draw(st.booleans()):
        X = np.round(np.abs(X)) % 4  # small integer categories, so one-hot sees known values
    specials = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e38, 3e38]), max_size=3))
    for value in specials:
        if n:
            X[rng.integers(n), rng.integers(d)] = value
    with np.errstate(over="ignore"):
        X = X.astype(dtype)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "strided":
        X = np.repeat(X, 2, axis=1)[:, ::2]
    return X, d


@SETTINGS
@given(data=st.data())
def test_random_pipelines_match_reference(data: st.DataObject) -> None:
    X, d = data.draw(batches())
    ops = data.draw(op_lists(d))
    output_dtype = data.draw(st.sampled_from(["float32", "float64"]))
    assert_same(run_all(ops, d, X, output_dtype, exact=data.draw(st.booleans())))


@pytest.mark.parametrize("op", [
    K.Impute(None, (7.0,)), K.Standardize(None, (1.0,), (2.0,)), K.MinMax(None, (3.0,), (-1.0,)),
    K.Clip(None, (-0.5,), (0.5,)), K.Log1p(None), K.Bucketize(None, ((-1.0, 0.0, 0.0, 2.0),) * 3),
    K.OneHot((1,), ((0.0, 1.0, 2.0),), "ignore"), K.Select((2, 0, 0)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_op_matches_reference(op: K.Op, dtype: type) -> None:
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(50, 3))).round().astype(dtype)
    X[3, 0] = np.nan if isinstance(op, K.Impute) else X[3, 0]
    assert_same(run_all([op], 3, X))


def test_each_op_semantics() -> None:
    X = np.array([[np.nan, 1.0, 2.0], [3.0, 0.0, -0.5]])
    np.testing.assert_array_equal(K.Pipeline([K.Impute(None, (9.0,))], 3, output_dtype="float64").transform(X)[0],
                                  [9.0, 1.0, 2.0])
    bucket = K.Pipeline([K.Bucketize(None, ((0.0, 2.0),) * 3), K.Impute(None, (0.0,))], 3).transform(X)
    np.testing.assert_array_equal(bucket, [[0, 1, 2], [2, 1, 0]])
    onehot = K.Pipeline([K.Select((1,)), K.OneHot(None, ((0.0, 1.0),), "error")], 3).transform(X)
    np.testing.assert_array_equal(onehot, [[0, 1], [1, 0]])


@pytest.mark.parametrize("backend_name", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_million_rows(backend_name: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1_000_000, 8)).astype(dtype)
    X[::997, 3] = np.nan
    ops = numeric_ops(8, rng)
    fast = K.Pipeline(ops, 8, backend=backend_name).transform(X)
    np.testing.assert_array_equal(fast, K.Pipeline(ops, 8, backend="numpy").transform(X))


@pytest.mark.parametrize("backend_name", COMPILED)
def test_million_rows_first_error_is_reported(backend_name: str) -> None:
    X = np.zeros((1_000_000, 4), dtype=np.float32)
    X[700_123, 2] = np.inf
    X[900_000, 1] = np.nan  # later row: must not be the one reported
    pipeline = K.Pipeline([K.Standardize(None, (0.0,), (1.0,))], 4, backend=backend_name)
    with pytest.raises(K.NonFiniteInputError, match="input column 2 is inf at row 700123"):
        pipeline.transform(X)
    X[700_123, 2] = 0.0
    with pytest.raises(K.NonFiniteOutputError, match="output column 1 .from input column 1. is nan at row 900000"):
        pipeline.transform(X)
