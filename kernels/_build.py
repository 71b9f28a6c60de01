"""Describes the Cython extension of infergate.kernels for setup.py; stdlib + setuptools + Cython only."""

import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

# Set to 1 at build time to turn bounds and wraparound checks back on (slow; for debugging a kernel).
DEBUG_ENV = "INFERGATE_CYTHON_DEBUG"
# Kernel sources relative to the repository root, and the module each becomes.
EXTENSIONS = {"infergate.kernels._cython_kernels": "kernels/_cython_kernels.pyx"}
# C headers the kernels include: a change rebuilds the extension, and sdists carry them.
DEPENDS = ["kernels/_affine_rows.h"]
# -O3 for vectorised inner loops; -ffp-contract=off keeps a*b+c two roundings, bit-equal to NumPy;
# -fno-trapping-math lets NaN-aware selects become vector blends (we never read FP exception flags);
# no -march=native by default, so a build runs on any host of its architecture (see MARCH_ENV).
COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
# Set at build time to a -march value (e.g. native, x86-64-v3) for wider vectors on a known fleet.
MARCH_ENV = "INFERGATE_CYTHON_MARCH"
LINK_ARGS = ["-fopenmp"]
# The kernels read arrays through NumPy's C API (cheaper per call than memoryviews); no deprecated API.
NUMPY_API = ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")


def compiler_directives() -> dict[str, object]:
    """The directives every kernel is compiled with, set once here rather than per file."""
    is_debug = os.environ.get(DEBUG_ENV) == "1"
    return {
        "language_level": 3,
        "boundscheck": is_debug,
        "wraparound": is_debug,
        "initializedcheck": is_debug,
        "cdivision": True,
        "embedsignature": True,
    }


def cython_extensions(root: str = ".") -> list[Any]:
    """setuptools Extensions for the kernels, already cythonized; [] (with a warning) if Cython is missing.

    The server runs without them (the auto backend falls back to Numba or NumPy), so a missing
    Cython or OpenMP-less compiler must not fail the install of everything else.
    """
    # setuptools ships no type information and types-setuptools is not a dependency.
    from setuptools import Extension  # type: ignore[import-untyped]

    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as error:
        print(f"infergate: {error.name} not installed; building without compiled kernels", file=sys.stderr)
        return []
    compile_args, link_args = list(COMPILE_ARGS), list(LINK_ARGS)
    if os.environ.get(MARCH_ENV):
        compile_args.append(f"-march={os.environ[MARCH_ENV]}")
    if sys.platform == "darwin" or os.name == "nt":
        # Apple clang and MSVC spell OpenMP differently; build serial kernels there rather than fail.
        compile_args, link_args = ["-O3"] if os.name != "nt" else ["/O2"], []
    extensions = [
        Extension(name, [os.path.join(root, source)], depends=[os.path.join(root, d) for d in DEPENDS],
                  include_dirs=[numpy.get_include()], define_macros=[NUMPY_API],
                  extra_compile_args=compile_args, extra_link_args=link_args)
        for name, source in EXTENSIONS.items()
    ]
    # Cython.Build.cythonize carries no annotations.
    return list(cythonize(extensions, compiler_directives=compiler_directives(), quiet=True))  # type: ignore[no-untyped-call]
