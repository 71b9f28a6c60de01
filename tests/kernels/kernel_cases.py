"""Shared values for the kernel tests: the backends that load here, and a fixed numeric pipeline.

A uniquely named module rather than conftest.py: tests/conftest.py is also a "conftest", so
`from conftest import ...` would get whichever of the two pytest imported last.
"""

import numpy as np

from infergate import kernels as K

BACKENDS = K.available_backends()  # every backend that loads here, fastest first
COMPILED = tuple(name for name in BACKENDS if name != "numpy")  # backends other than the NumPy reference


def numeric_ops(d: int, rng: np.random.Generator) -> list[K.Op]:
    """impute -> standardize -> minmax -> clip over every column: the one-pass fast path."""
    return [K.Impute(None, tuple(rng.normal(size=d))), K.Standardize(None, tuple(rng.normal(size=d)),
            tuple(rng.uniform(0.5, 2.0, d))), K.MinMax(None, (0.5,), (0.25,)), K.Clip(None, (-1.0,), (1.0,))]
