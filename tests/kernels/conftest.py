"""Shared fixtures for the kernel tests: the backends that load here, and a few fixed pipelines."""

import numpy as np
import pytest

from infergate import kernels as K

BACKENDS = K.available_backends()
COMPILED = tuple(name for name in BACKENDS if name != "numpy")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def numeric_ops(d: int, rng: np.random.Generator) -> list:
    """impute -> standardize -> minmax -> clip over every column: the one-pass fast path."""
    return [K.Impute(None, tuple(rng.normal(size=d))), K.Standardize(None, tuple(rng.normal(size=d)),
            tuple(rng.uniform(0.5, 2.0, d))), K.MinMax(None, (0.5,), (0.25,)), K.Clip(None, (-1.0,), (1.0,))]
