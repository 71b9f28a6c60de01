"""Chooses a kernel backend: Cython if its extension imports, else Numba, else the NumPy reference.

Like uvicorn's protocols/http/auto.py: the fast implementation when present, the portable one
otherwise; a missing or broken backend is logged, never fatal.
"""

import functools
import logging

from .backend import Backend
from .errors import ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("cython", "numba", "numpy")  # every backend name, fastest first; "auto" picks the first that loads


@functools.cache
def _load(name: str) -> Backend | None:
    try:
        if name == "cython":
            from .cython_backend import CythonBackend

            return CythonBackend()
        if name == "numba":
            # Importing compiles (or loads from cache) every numba kernel: this is the load-time cost.
            from .numba_backend import NumbaBackend

            return NumbaBackend()
        from .reference import NumpyBackend

        return NumpyBackend()
    except Exception as error:  # ImportError, numba/llvmlite load errors: fall back, never fail the server
        logger.warning("kernel backend %s unavailable: %s", name, error)
        return None


def get_backend(name: str = "auto") -> Backend:
    """The named backend, or for 'auto' the fastest that loads; ConfigError if a named one is unavailable."""
    if name == "auto":
        for candidate in BACKENDS:
            backend = _load(candidate)
            if backend is not None:
                return backend
    if name not in BACKENDS:
        raise ConfigError("backend", f"unknown backend {name!r}; expected 'auto' or one of {', '.join(BACKENDS)}")
    loaded = _load(name)
    if loaded is None:
        raise ConfigError("backend", f"backend {name!r} is not available here (see the log for why)")
    return loaded


def available_backends() -> tuple[str, ...]:
    """Backends that load in this process, fastest first (loading numba compiles its kernels)."""
    return tuple(name for name in BACKENDS if _load(name) is not None)
