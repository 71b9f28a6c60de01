"""Feature-transform kernels: fused per-column pipelines and feature hashing in Cython, Numba and NumPy."""

import logging

from .auto import BACKENDS, available_backends, get_backend
from .errors import (
                     ConfigError,
                     InputTypeError,
                     KernelError,
                     NonFiniteInputError,
                     NonFiniteOutputError,
                     ShapeError,
                     UnknownCategoryError,
                     UnknownOpError,
                     UnsupportedEstimatorError,
)
from .fit import fit
from .ops import OPS, Bucketize, Clip, Impute, Log1p, MinMax, OneHot, Op, Select, Standardize
from .pipeline import PIPELINE_FILENAME, Pipeline, TokenHasher, from_config, load, save
from .sklearn import from_sklearn

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "OPS", "PIPELINE_FILENAME", "Bucketize", "Clip", "ConfigError", "Impute", "InputTypeError",
    "KernelError", "Log1p", "MinMax", "NonFiniteInputError", "NonFiniteOutputError", "OneHot", "Op", "Pipeline",
    "Select", "ShapeError", "Standardize", "TokenHasher", "UnknownCategoryError", "UnknownOpError",
    "UnsupportedEstimatorError", "available_backends", "fit", "from_config", "from_sklearn", "get_backend", "load",
    "save",
]
