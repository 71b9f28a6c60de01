"""Shared values and helpers for the kernel tests: the backends that load here, a fixed numeric pipeline, and
comparison of every backend against the NumPy reference.

A uniquely named module rather than conftest.py: tests/conftest.py is also a "conftest", so
`from conftest import ...` would get whichever of the two pytest imported last.
"""

import numpy as np

from infergate import kernels as K

BACKENDS = K.available_backends()  # every backend that loads here, fastest first
COMPILED = tuple(name for name in BACKENDS if name != "numpy")  # backends other than the NumPy reference


def run_all(ops: list, d: int, X: np.ndarray, output_dtype: str = "float32", exact: bool = False,
            n_threads: int | None = None) -> dict:
    """{backend: output array or the KernelError it raised}."""
    results = {}
    for name in K.available_backends():
        pipeline = K.Pipeline(ops, d, output_dtype=output_dtype, backend=name, exact=exact, n_threads=n_threads)
        try:
            results[name] = pipeline.transform(X)
        except K.KernelError as error:
            results[name] = error
    return results


def assert_same(results: dict) -> None:
    ref = results["numpy"]
    for name, got in results.items():
        if isinstance(ref, K.KernelError):
            assert type(got) is type(ref) and str(got) == str(ref), (name, got, ref)
        else:
            assert not isinstance(got, Exception), (name, got)
            np.testing.assert_array_equal(got, ref, err_msg=name)


def numeric_ops(d: int, rng: np.random.Generator) -> list[K.Op]:
    """impute -> standardize -> minmax -> clip over every column: the one-pass fast path."""
    return [K.Impute(None, tuple(rng.normal(size=d))), K.Standardize(None, tuple(rng.normal(size=d)),
            tuple(rng.uniform(0.5, 2.0, d))), K.MinMax(None, (0.5,), (0.25,)), K.Clip(None, (-1.0,), (1.0,))]
