"""Translates fitted scikit-learn transformers into a Pipeline (or TokenHasher) with the same output."""

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from .errors import UnsupportedEstimatorError
from .ops import Bucketize, Clip, Impute, Log1p, MinMax, OneHot, Op, Select, Standardize
from .pipeline import Pipeline, TokenHasher

logger = logging.getLogger(__name__)

Translation = tuple[list[Op], int]  # ops in sequential-matrix form, and the width they output


def _name(est: Any) -> str:
    return type(est).__name__


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


def _imputer(est: Any, width: int) -> Translation:
    if not (isinstance(est.missing_values, float) and math.isnan(est.missing_values)):
        raise UnsupportedEstimatorError(_name(est), f"missing_values={est.missing_values!r}; only NaN is supported")
    if est.add_indicator:
        raise UnsupportedEstimatorError(_name(est), "add_indicator=True is not supported")
    stats = np.asarray(est.statistics_, dtype=np.float64)
    if est.keep_empty_features or not np.isnan(stats).any():
        return [Impute(None, _floats(stats))], width
    # SimpleImputer drops the columns it saw no value in; impute the rest, then drop those.
    keep = tuple(int(i) for i in np.flatnonzero(~np.isnan(stats)))
    return [Impute(keep, _floats(stats[list(keep)])), Select(keep)], len(keep)


def _scaler(est: Any, width: int) -> Translation:
    kind = _name(est)
    if kind == "StandardScaler":
        mean, scale = est.mean_, est.scale_
    elif kind == "RobustScaler":
        mean, scale = est.center_, est.scale_
    else:  # MaxAbsScaler
        mean, scale = None, est.scale_
    mean = np.zeros(width) if mean is None else mean
    scale = np.ones(width) if scale is None else scale
    return [Standardize(None, _floats(mean), _floats(scale))], width


def _minmax(est: Any, width: int) -> Translation:
    ops: list[Op] = [MinMax(None, _floats(est.scale_), _floats(est.min_))]
    if est.clip:
        low, high = est.feature_range
        ops.append(Clip(None, (float(low),), (float(high),)))
    return ops, width


def _kbins(est: Any, width: int) -> Translation:
    edges = tuple(_floats(e)[1:-1] for e in est.bin_edges_)
    ops: list[Op] = [Bucketize(None, edges)]
    if est.encode == "ordinal":
        return ops, width
    if est.encode != "onehot-dense":
        raise UnsupportedEstimatorError(_name(est), f"encode={est.encode!r}; use 'ordinal' or 'onehot-dense'")
    n_bins = [int(n) for n in est.n_bins_]
    ops.append(OneHot(None, tuple(tuple(float(b) for b in range(n)) for n in n_bins), "ignore", (-1,) * width))
    return ops, sum(n_bins)


def _onehot(est: Any, width: int) -> Translation:
    if est.sparse_output:
        raise UnsupportedEstimatorError(_name(est), "sparse_output=True; fit with sparse_output=False (dense)")
    if getattr(est, "_infrequent_enabled", False):
        raise UnsupportedEstimatorError(_name(est), "infrequent categories (max_categories/min_frequency)")
    if est.handle_unknown not in ("error", "ignore", "infrequent_if_exist"):
        raise UnsupportedEstimatorError(_name(est), f"handle_unknown={est.handle_unknown!r}")
    cats = []
    for column, values in enumerate(est.categories_):
        if values.dtype.kind not in "iufb":
            raise UnsupportedEstimatorError(_name(est), f"column {column} has non-numeric categories")
        if np.isnan(values.astype(np.float64)).any():
            raise UnsupportedEstimatorError(_name(est), f"column {column} has NaN as a category")
        cats.append(_floats(values))
    drop_idx = est.drop_idx_
    drops = tuple(-1 if drop_idx is None or drop_idx[c] is None else int(drop_idx[c]) for c in range(width))
    # Without infrequent categories, 'infrequent_if_exist' encodes unknowns as all zeros, like 'ignore'.
    unknown = "error" if est.handle_unknown == "error" else "ignore"
    return [OneHot(None, tuple(cats), unknown, drops)], sum(len(c) - (d >= 0) for c, d in zip(cats, drops))


def _function(est: Any, width: int) -> Translation:
    if est.func is None:
        return [], width
    if est.func is np.log1p and est.kw_args is None:
        return [Log1p(None)], width
    raise UnsupportedEstimatorError(_name(est), f"func={est.func!r}; only None and np.log1p are supported")


def _pipeline(est: Any, width: int) -> Translation:
    ops: list[Op] = []
    for name, step in est.steps:
        if step is None or step == "passthrough":
            continue
        if not hasattr(step, "transform"):
            raise UnsupportedEstimatorError(f"Pipeline step {name!r} ({_name(step)})",
                                            "not a transformer; pass pipeline[:-1] to translate the transform part")
        step_ops, width = _translate(step, width)
        ops.extend(step_ops)
    return ops, width


def _resolve(columns: Any, est: Any, width: int) -> list[int]:
    """ColumnTransformer column spec -> integer indices (ints, slices, bool masks, or fitted feature names)."""
    if isinstance(columns, slice):
        return list(range(width))[columns]
    if callable(columns):
        raise UnsupportedEstimatorError(_name(est), "callable column selectors are not supported")
    values: list[Any] = [columns] if np.isscalar(columns) else list(columns)
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return [i for i, keep in enumerate(values) if keep]
    names = list(getattr(est, "feature_names_in_", []))
    out = []
    for value in values:
        if isinstance(value, str):
            if value not in names:
                raise UnsupportedEstimatorError(_name(est), f"column {value!r} is not a fitted feature name")
            out.append(names.index(value))
        else:
            out.append(int(value) % width)
    return out


def _shift(op: Op, offset: int, branch_width: int, total_width: int) -> Op:
    """Re-express a branch op (columns relative to its branch) on the whole matrix."""
    if isinstance(op, Select):
        inner = range(branch_width) if op.columns is None else op.columns
        after = range(offset + branch_width, total_width)
        return Select((*range(offset), *(offset + c for c in inner), *after))
    inner = range(branch_width) if op.columns is None else op.columns
    return dataclasses.replace(op, columns=tuple(offset + c for c in inner))


def _op_width(op: Op, width: int) -> int:
    if isinstance(op, Select):
        return width if op.columns is None else len(op.columns)
    if isinstance(op, OneHot):
        columns = range(width) if op.columns is None else op.columns
        drops = op.drop if len(op.drop) == len(op.categories) else (-1,) * len(op.categories)
        return width + sum(len(c) - (d >= 0) - 1 for c, d in zip(op.categories, drops)) if len(columns) else width
    return width


def _column_transformer(est: Any, width: int) -> Translation:
    if getattr(est, "sparse_output_", False):
        raise UnsupportedEstimatorError(_name(est), "sparse output is not supported")
    branches = []
    for name, trans, columns in est.transformers_:
        if trans == "drop":
            continue
        cols = _resolve(columns, est, width)
        if cols:
            branches.append((name, trans, cols))
    selected = [c for _, _, cols in branches for c in cols]
    ops: list[Op] = [Select(tuple(selected))]
    total, offset = len(selected), 0
    for name, trans, cols in branches:
        branch_ops, branch_out = ([], len(cols)) if trans == "passthrough" else _translate(trans, len(cols))
        branch_width = len(cols)
        for op in branch_ops:
            ops.append(_shift(op, offset, branch_width, total))
            new_width = _op_width(op, branch_width)
            total += new_width - branch_width
            branch_width = new_width
        if branch_width != branch_out:
            raise AssertionError(f"branch {name!r}: width {branch_width} != {branch_out}")
        offset += branch_width
    return ops, offset


_TRANSLATORS = {
    "SimpleImputer": _imputer, "StandardScaler": _scaler, "RobustScaler": _scaler, "MaxAbsScaler": _scaler,
    "MinMaxScaler": _minmax, "KBinsDiscretizer": _kbins, "OneHotEncoder": _onehot, "FunctionTransformer": _function,
    "Pipeline": _pipeline, "ColumnTransformer": _column_transformer,
}


def _translate(est: Any, width: int) -> Translation:
    translator = _TRANSLATORS.get(_name(est))
    if translator is None:
        if _name(est) == "FeatureHasher":
            raise UnsupportedEstimatorError("FeatureHasher", "only supported on its own (it takes tokens, not numbers)")
        raise UnsupportedEstimatorError(_name(est), f"not one of {', '.join(_TRANSLATORS)}, FeatureHasher")
    if _name(est) not in ("Pipeline", "FunctionTransformer") and not hasattr(est, "n_features_in_"):
        raise UnsupportedEstimatorError(_name(est), "not fitted")
    n_in = getattr(est, "n_features_in_", width)
    if n_in != width:
        raise UnsupportedEstimatorError(_name(est), f"fitted on {n_in} columns but receives {width}")
    return translator(est, width)


def from_sklearn(fitted: Any, n_features_in: int | None = None, *, output_dtype: str = "float32",
                 backend: str = "auto", n_threads: int | None = None) -> Pipeline | TokenHasher:
    """A Pipeline whose transform equals fitted.transform (float tolerance), or a TokenHasher for a FeatureHasher.

    Supports SimpleImputer (NaN), StandardScaler, RobustScaler, MaxAbsScaler, MinMaxScaler (clip too),
    KBinsDiscretizer (ordinal, onehot-dense), OneHotEncoder (dense, numeric), FunctionTransformer
    (None, np.log1p), and Pipeline / ColumnTransformer of them; raises UnsupportedEstimatorError otherwise.
    """
    if _name(fitted) == "FeatureHasher":
        if fitted.input_type != "string":
            raise UnsupportedEstimatorError("FeatureHasher", f"input_type={fitted.input_type!r}; only 'string'")
        return TokenHasher(fitted.n_features, alternate_sign=fitted.alternate_sign, output_dtype=output_dtype,
                           backend=backend, n_threads=n_threads)
    width = n_features_in if n_features_in is not None else getattr(fitted, "n_features_in_", None)
    if width is None:
        raise UnsupportedEstimatorError(_name(fitted), "n_features_in_ unknown; pass n_features_in")
    ops, _ = _translate(fitted, int(width))
    return Pipeline(ops, int(width), output_dtype=output_dtype, backend=backend, n_threads=n_threads,
                    exact=_bins_after_scaling(ops))


def _bins_after_scaling(ops: list[Op]) -> bool:
    """Whether a bucketize follows a scaler: then the pipeline must round exactly as scikit-learn does.

    KBinsDiscretizer's quantile edges are often values of the scaled data itself, so a value can lie
    exactly on an edge; the composed affine map (or a multiply by 1/scale) may round it an ulp the other
    way and into the neighbouring bin. Exact mode costs extra passes, so it is used only here.
    """
    is_scaled = False
    for op in ops:
        if isinstance(op, Bucketize) and is_scaled:
            return True
        is_scaled = is_scaled or isinstance(op, (Standardize, MinMax))
    return False
