"""The single-affine fast path (impute -> affine -> clip over every column) equals the reference on every backend.

Both Cython loops run (AVX where the CPU has it, and the portable one), across dtypes, layouts,
widths that leave vector tails, NaN/inf/overflow, outputs large enough to stream, and misaligned buffers.
"""

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import BACKENDS, assert_same, run_all

from infergate import kernels as K
from infergate.kernels.program import single_affine_params

# Rows of 64 float32 columns whose output (16.9 MB) is past the Cython kernels' streaming-store threshold.
STREAMING_ROWS = 66_000
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 3.4e38, -3.4e38, 1e-45]


@pytest.fixture(params=["avx", "portable"])
def simd(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the Cython backend's AVX loop or its portable loop (the other backends ignore this)."""
    try:
        from infergate.kernels import _cython_kernels as ck
    except ImportError:
        if request.param == "avx":
            pytest.skip("Cython kernels not built")
        yield str(request.param)
        return
    was = ck.set_simd(request.param == "avx")
    if request.param == "avx" and ck.simd_level() != "avx":
        ck.set_simd(was)
        pytest.skip("this CPU has no AVX")
    try:
        yield str(request.param)
    finally:
        ck.set_simd(was)


def affine_ops(d: int, draw: st.DrawFn) -> list[K.Op]:
    """Some of impute, standardize, minmax, clip over every column: always one K_AFFINE record."""
    finite = st.floats(-3, 3, allow_nan=False)
    ops: list[K.Op] = []
    if draw(st.booleans()):
        ops.append(K.Impute(None, tuple(draw(st.lists(finite, min_size=d, max_size=d)))))
    if draw(st.booleans()):
        ops.append(K.Standardize(None, tuple(draw(st.lists(finite, min_size=d, max_size=d))),
                                 tuple(draw(st.lists(st.floats(1e-3, 5), min_size=d, max_size=d)))))
    if draw(st.booleans()):
        ops.append(K.MinMax(None, (draw(st.floats(-1e3, 1e3)),), (draw(finite),)))
    if draw(st.booleans()) or not ops:
        # Bounds inside float32's range, beyond it, and infinite: each picks another set of SIMD checks.
        low = draw(st.one_of(st.floats(-3, 0), st.sampled_from([-np.inf, -1e300, -3.4e38])))
        high = draw(st.one_of(st.floats(0, 4), st.sampled_from([np.inf, 1e300, 3.4e38])))
        ops.append(K.Clip(None, (low,), (high,)))
    return ops


def layout(X: np.ndarray, kind: str) -> np.ndarray:
    if kind == "F":
        return np.asfortranarray(X)
    if kind == "strided":
        return np.repeat(X, 2, axis=1)[:, ::2]
    return X


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_single_affine_matches_reference(simd: str, data: st.DataObject) -> None:
    d = data.draw(st.integers(1, 13), label="width")  # below, at and between multiples of the vector width
    n = data.draw(st.sampled_from([0, 1, 2, 5, 33]), label="rows")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    ops = affine_ops(d, data.draw)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    X = rng.normal(scale=data.draw(st.sampled_from([1.0, 1e3])), size=(n, d))
    for value in data.draw(st.lists(st.sampled_from(SPECIALS), max_size=4)):
        if n:
            X[rng.integers(n), rng.integers(d)] = value
    with np.errstate(over="ignore"):
        X = layout(X.astype(dtype), data.draw(st.sampled_from(["C", "F", "strided"])))
    assert single_affine_params(K.Pipeline(ops, d, backend="numpy").program) is not None
    assert_same(run_all(ops, d, X, data.draw(st.sampled_from(["float32", "float64"]))))


def streaming_ops(d: int) -> list[K.Op]:
    rng = np.random.default_rng(3)
    return [K.Impute(None, tuple(rng.normal(size=d))), K.Standardize(None, tuple(rng.normal(size=d)),
            tuple(rng.uniform(0.5, 2.0, d))), K.MinMax(None, (2.0,), (0.25,)), K.Clip(None, (-3.0,), (3.0,))]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("float64", "float64"), ("float32", "float64")])
def test_streaming_batches_match_reference(simd: str, n_threads: int, dtypes: tuple[str, str]) -> None:
    in_dtype, out_dtype = dtypes
    rng = np.random.default_rng(4)
    X = rng.normal(size=(STREAMING_ROWS, 64)).astype(in_dtype)
    X[rng.random(STREAMING_ROWS) < 0.05, 7] = np.nan
    ops = streaming_ops(64)
    pipelines = {name: K.Pipeline(ops, 64, output_dtype=out_dtype, backend=name, n_threads=n_threads)
                 for name in BACKENDS}
    expected = pipelines["numpy"].transform(X)
    width = np.dtype(out_dtype).itemsize
    for name, pipeline in pipelines.items():
        # Outputs 0..3 elements past a 16-byte boundary: streamed rows start with scalar stores.
        for shift in range(4):
            out = np.empty(X.size + 4, out_dtype)[shift:shift + X.size].reshape(X.shape)
            assert out.ctypes.data % 16 == (shift * width) % 16
            np.testing.assert_array_equal(pipeline.transform(X, out=out), expected, err_msg=f"{name} {shift}")
        np.testing.assert_array_equal(pipeline.transform(X), expected, err_msg=name)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_streaming_batch_errors_name_the_first_bad_row(simd: str, n_threads: int) -> None:
    X = np.zeros((STREAMING_ROWS, 64), np.float32)
    X[50_001, 63] = -np.inf  # the last column: the scalar tail of an unaligned row
    X[60_000, 5] = 3.4e38  # * 2 overflows float32 only when the output is cast
    ops = [K.MinMax(None, (2.0,), (0.0,))]
    for name in BACKENDS:
        pipeline = K.Pipeline(ops, 64, backend=name, n_threads=n_threads)
        with pytest.raises(K.NonFiniteInputError, match="input column 63 is -inf at row 50001"):
            pipeline.transform(X)
        X[50_001, 63] = 0.0
        with pytest.raises(K.NonFiniteOutputError, match=r"output column 5 \(from input column 5\) is inf at row 60000"
                           ):
            pipeline.transform(X)
        X[50_001, 63] = -np.inf


@pytest.mark.parametrize("n_rows", [3, STREAMING_ROWS])
def test_overflow_before_a_clip_is_not_an_error(simd: str, n_rows: int) -> None:
    # 1e300 * 1e10 overflows to inf before the clip, which brings it back to 1: the SIMD loop flags the row,
    # the checking path finds nothing wrong, and the rows after it are still transformed.
    X = np.zeros((n_rows, 8))
    X[1, 3] = 1e300
    X[2:, :] = 0.25
    ops = [K.MinMax(None, (1e10,), (0.0,)), K.Clip(None, (-1.0,), (1.0,))]
    results = run_all(ops, 8, X)
    assert_same(results)
    assert results["numpy"][1, 3] == 1.0 and (results["numpy"][2:] == 1.0).all()


def test_unaligned_output_buffer(simd: str) -> None:
    # A float32 view one byte into a buffer: no element alignment, so no streaming stores; plain stores still work.
    raw = np.zeros(STREAMING_ROWS * 64 * 4 + 1, np.uint8)
    out = raw[1:].view(np.float32).reshape(STREAMING_ROWS, 64)
    assert not out.flags.aligned
    X = np.random.default_rng(5).normal(size=(STREAMING_ROWS, 64)).astype(np.float32)
    for name in BACKENDS:
        pipeline = K.Pipeline(streaming_ops(64), 64, backend=name)
        if name == "numba":
            continue  # numba's typed arrays require aligned data; the server never hands it such a buffer
        np.testing.assert_array_equal(pipeline.transform(X, out=out), K.Pipeline(
            streaming_ops(64), 64, backend="numpy").transform(X), err_msg=name)


@pytest.mark.parametrize("values, error, match", [
    ({(3, 2): np.inf}, K.NonFiniteInputError, "input column 2 is inf at row 3"),
    ({(4, 0): -np.inf, (2, 6): np.nan}, K.NonFiniteOutputError,
     "output column 6 (from input column 6) is nan at row 2"),
    ({(1, 4): 3.4e38}, K.NonFiniteOutputError, "output column 4 (from input column 4) is inf at row 1"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_errors_name_row_column_value(simd: str, values: dict, error: type, match: str, dtype: type) -> None:
    X = np.ones((6, 7), dtype)
    for (row, column), value in values.items():
        X[row, column] = value
    ops = [K.Standardize(None, (0.5,), (0.5,))]  # no impute: NaN reaches the output check; 3.4e38 * 2 overflows
    results = run_all(ops, 7, X)
    assert_same(results)
    assert isinstance(results["numpy"], error) and match in str(results["numpy"])


def test_cython_kernel_rejects_buffers_it_cannot_run() -> None:
    ck = pytest.importorskip("infergate.kernels._cython_kernels")
    from infergate.kernels.cython_backend import CythonBackend

    kernel = CythonBackend().compile(K.Pipeline(streaming_ops(4), 4, backend="numpy").program)
    X, out = np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32)
    assert kernel.run(X, out, 1) == (0, 0, 0, 0.0)
    transposed = np.zeros((4, 3), np.float32).T
    for bad_x, bad_out in [(X.astype(np.int32), out), (X, out[:2]), (X[:, :3].copy(), out), (X.astype(">f4"), out),
                           (X, transposed), (X, out[None]), (X, np.zeros((3, 4), np.float16))]:
        with pytest.raises(ValueError, match="expected C-contiguous native float32/float64 arrays"):
            kernel.run(bad_x, bad_out, 1)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="writable output"):
        kernel.run(X, out, 1)
    assert isinstance(ck.simd_level(), str)
