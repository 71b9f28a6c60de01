"""Fits pipeline ops from data (NumPy, offline): the same statistics scikit-learn's transformers learn."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError
from .ops import Bucketize, Impute, MinMax, OneHot, Op, Standardize, op_from_config
from .pipeline import Pipeline
from .program import compile_ops
from .reference import run_program

logger = logging.getLogger(__name__)

IMPUTE_STRATEGIES = ("mean", "median", "constant")
BIN_STRATEGIES = ("uniform", "quantile")


def apply_op(op: Op, X: np.ndarray) -> np.ndarray:
    """One op on a float64 matrix with the reference semantics, errors ignored (NaN may be imputed later)."""
    program = compile_ops([op], X.shape[1])
    out = np.empty((X.shape[0], program.n_out), dtype=np.float64)
    run_program(program, X, out)
    return out


def _columns(spec: Mapping[str, Any], width: int) -> list[int]:
    raw = spec.get("columns", "all")
    return list(range(width)) if raw in (None, "all") else list(raw)


def _fit_one(spec: Mapping[str, Any], X: np.ndarray, step: int) -> Op:
    name = spec.get("op")
    cols = _columns(spec, X.shape[1])
    if any(not 0 <= c < X.shape[1] for c in cols):
        raise ConfigError(f"steps[{step}].columns", f"{cols} out of range for {X.shape[1]} columns")
    sub = X[:, cols]
    with np.errstate(all="ignore"):
        if name == "impute":
            strategy = spec.get("strategy", "mean")
            if strategy not in IMPUTE_STRATEGIES:
                raise ConfigError(f"steps[{step}].strategy", f"{strategy!r} is not one of {IMPUTE_STRATEGIES}")
            if strategy == "constant":
                values = np.full(len(cols), float(spec.get("fill_value", 0.0)))
            else:
                values = np.nanmean(sub, axis=0) if strategy == "mean" else np.nanmedian(sub, axis=0)
            # A column with no observed value gets 0, rather than dropping it as SimpleImputer does.
            return Impute(tuple(cols), tuple(float(v) for v in np.nan_to_num(values, nan=0.0)))
        if name == "standardize":
            scale = np.nanstd(sub, axis=0)
            scale[~(scale > 0)] = 1.0  # constant columns are centred, not divided by zero (as StandardScaler)
            mean = np.nan_to_num(np.nanmean(sub, axis=0))
            return Standardize(tuple(cols), tuple(mean.tolist()), tuple(scale.tolist()))
        if name == "minmax":
            low, high = spec.get("feature_range", (0.0, 1.0))
            data_min, data_max = np.nanmin(sub, axis=0), np.nanmax(sub, axis=0)
            data_range = data_max - data_min
            data_range[~(data_range > 0)] = 1.0
            scale = (high - low) / data_range
            return MinMax(tuple(cols), tuple(scale.tolist()), tuple(np.nan_to_num(low - data_min * scale).tolist()))
        if name == "bucketize":
            return Bucketize(tuple(cols), tuple(_edges(sub[:, k], spec, step) for k in range(len(cols))))
        if name == "onehot":
            cats = tuple(tuple(np.unique(sub[~np.isnan(sub[:, k]), k]).tolist()) or (0.0,) for k in range(len(cols)))
            return OneHot(tuple(cols), cats, spec.get("handle_unknown", "error"), (-1,) * len(cols))
    # clip, log1p and select take no fitted parameters; anything else is an UnknownOpError.
    return op_from_config(dict(spec), step)


def _edges(values: np.ndarray, spec: Mapping[str, Any], step: int) -> tuple[float, ...]:
    n_bins = int(spec.get("n_bins", 5))
    strategy = spec.get("strategy", "quantile")
    if n_bins < 2 or strategy not in BIN_STRATEGIES:
        raise ConfigError(f"steps[{step}]", f"bucketize needs n_bins >= 2 and strategy in {BIN_STRATEGIES}")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return ()
    if strategy == "uniform":
        edges = np.linspace(values.min(), values.max(), n_bins + 1)
    else:
        edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    return tuple(np.unique(edges[1:-1]).tolist())


def fit(X: Any, steps: Sequence[Mapping[str, Any]], *, output_dtype: str = "float32", backend: str = "auto",
        n_threads: int | None = None) -> Pipeline:
    """Fit ops in order on X, each on the output of the ones before (as a scikit-learn Pipeline).

    A step is a config dict without fitted parameters plus fit options, e.g. {"op": "impute",
    "strategy": "median"}, {"op": "standardize"}, {"op": "bucketize", "n_bins": 8}, {"op": "clip",
    "low": -3, "high": 3}.
    """
    data = np.asarray(X, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < 1:
        raise ConfigError("X", f"expected a 2-D array with at least one column, got shape {data.shape}")
    ops: list[Op] = []
    current = data
    for step, spec in enumerate(steps):
        if not isinstance(spec, Mapping):
            raise ConfigError(f"steps[{step}]", f"expected a mapping, got {spec!r}")
        op = _fit_one(spec, current, step)
        ops.append(op)
        current = apply_op(op, current)
    return Pipeline(ops, data.shape[1], output_dtype=output_dtype, backend=backend, n_threads=n_threads)

