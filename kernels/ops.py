"""Op specs of a feature pipeline: immutable dataclasses, their config form and validation."""

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, UnknownOpError

logger = logging.getLogger(__name__)

# Column selector meaning "every column of the matrix this step sees".
ALL_COLUMNS = None
# Accepted handle_unknown values of one-hot, as in scikit-learn's OneHotEncoder.
HANDLE_UNKNOWN = ("error", "ignore")

Columns = tuple[int, ...] | None


def _where(step: int, field: str) -> str:
    return f"steps[{step}].{field}"


def _columns(raw: Any, step: int) -> Columns:
    if raw is None or raw == "all":
        return ALL_COLUMNS
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ConfigError(_where(step, "columns"), f"expected a list of column indices or 'all', got {raw!r}")
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(_where(step, "columns"), f"column index {value!r} is not a non-negative integer")
    return tuple(raw)


def _floats(raw: Any, step: int, field: str, *, allow_nan: bool = False, allow_inf: bool = False) -> tuple[float, ...]:
    """A per-column float list; a bare number is kept as a 1-tuple and broadcast at compile time."""
    values = [raw] if isinstance(raw, (int, float)) and not isinstance(raw, bool) else raw
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(_where(step, field), f"expected a number or a list of numbers, got {raw!r}")
    out = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(_where(step, f"{field}[{index}]"), f"{value!r} is not a number")
        value = float(value)
        if (math.isnan(value) and not allow_nan) or (math.isinf(value) and not allow_inf):
            raise ConfigError(_where(step, f"{field}[{index}]"), f"{value!r} is not allowed here")
        out.append(value)
    return tuple(out)


def _float_lists(raw: Any, step: int, field: str) -> tuple[tuple[float, ...], ...]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise ConfigError(_where(step, field), f"expected a list of number lists (one per column), got {raw!r}")
    return tuple(_floats(list(item), step, f"{field}[{i}]") if isinstance(item, Sequence) else
                 _floats(item, step, f"{field}[{i}]") for i, item in enumerate(raw))


def _require(config: Mapping[str, Any], key: str, step: int) -> Any:
    if key not in config:
        raise ConfigError(f"steps[{step}]", f"op {config.get('op')!r} needs field {key!r}")
    return config[key]


def _check_fields(config: Mapping[str, Any], allowed: tuple[str, ...], step: int) -> None:
    extra = sorted(set(config) - set(allowed) - {"op", "columns"})
    if extra:
        raise ConfigError(f"steps[{step}]", f"op {config.get('op')!r} does not take field(s) {', '.join(extra)}")


@dataclass(frozen=True)
class Op:
    """Base of every op: `columns` picks columns of the matrix the step sees (None: all)."""

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()
    columns: Columns

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Op":
        """Build and validate this op from its config dict; each op in OPS overrides this."""
        raise NotImplementedError(f"{cls.__name__} has no config form")

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.name, "columns": "all" if self.columns is None else list(self.columns)}
        for field in self.fields:
            value = getattr(self, field)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[field] = value
        return out


@dataclass(frozen=True)
class Select(Op):
    """Reorder, duplicate or drop columns: the output is X[:, columns] (ColumnTransformer's selections)."""

    name: ClassVar[str] = "select"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Select":
        _check_fields(config, (), step)
        columns = _columns(_require(config, "columns", step), step)
        return cls(columns)


@dataclass(frozen=True)
class Impute(Op):
    """NaN -> values[k] in the k-th selected column (SimpleImputer with missing_values=NaN)."""

    name: ClassVar[str] = "impute"
    fields: ClassVar[tuple[str, ...]] = ("values",)
    values: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Impute":
        _check_fields(config, cls.fields, step)
        return cls(_columns(config.get("columns"), step), _floats(_require(config, "values", step), step, "values"))


@dataclass(frozen=True)
class Standardize(Op):
    """(x - mean) / scale per column (StandardScaler, RobustScaler, MaxAbsScaler)."""

    name: ClassVar[str] = "standardize"
    fields: ClassVar[tuple[str, ...]] = ("mean", "scale")
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Standardize":
        _check_fields(config, cls.fields, step)
        scale = _floats(_require(config, "scale", step), step, "scale")
        for index, value in enumerate(scale):
            if value == 0.0:
                raise ConfigError(_where(step, f"scale[{index}]"), "scale must not be zero")
        return cls(_columns(config.get("columns"), step), _floats(_require(config, "mean", step), step, "mean"), scale)


@dataclass(frozen=True)
class MinMax(Op):
    """x * scale + offset per column (MinMaxScaler's scale_ and min_)."""

    name: ClassVar[str] = "minmax"
    fields: ClassVar[tuple[str, ...]] = ("scale", "offset")
    scale: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "MinMax":
        _check_fields(config, cls.fields, step)
        return cls(_columns(config.get("columns"), step), _floats(_require(config, "scale", step), step, "scale"),
                   _floats(_require(config, "offset", step), step, "offset"))


@dataclass(frozen=True)
class Clip(Op):
    """min(max(x, low), high) per column; NaN stays NaN (as np.clip)."""

    name: ClassVar[str] = "clip"
    fields: ClassVar[tuple[str, ...]] = ("low", "high")
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Clip":
        _check_fields(config, cls.fields, step)
        low = _floats(_require(config, "low", step), step, "low", allow_inf=True)
        high = _floats(_require(config, "high", step), step, "high", allow_inf=True)
        if len(low) == len(high):
            for index, (lo, hi) in enumerate(zip(low, high)):
                if lo > hi:
                    raise ConfigError(_where(step, f"low[{index}]"), f"low {lo!r} is above high {hi!r}")
        return cls(_columns(config.get("columns"), step), low, high)


@dataclass(frozen=True)
class Log1p(Op):
    """log(1 + x) per column; below -1 gives NaN, which the output check rejects."""

    name: ClassVar[str] = "log1p"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Log1p":
        _check_fields(config, (), step)
        return cls(_columns(config.get("columns"), step))


@dataclass(frozen=True)
class Bucketize(Op):
    """Bin index = number of boundaries <= x (np.searchsorted side='right'; KBinsDiscretizer ordinal)."""

    name: ClassVar[str] = "bucketize"
    fields: ClassVar[tuple[str, ...]] = ("boundaries",)
    boundaries: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "Bucketize":
        _check_fields(config, cls.fields, step)
        boundaries = _float_lists(_require(config, "boundaries", step), step, "boundaries")
        for column, edges in enumerate(boundaries):
            for index in range(1, len(edges)):
                if edges[index] < edges[index - 1]:
                    raise ConfigError(_where(step, f"boundaries[{column}]"),
                                      f"not sorted: {edges[index - 1]!r} then {edges[index]!r} at index {index}")
        return cls(_columns(config.get("columns"), step), boundaries)


@dataclass(frozen=True)
class OneHot(Op):
    """Each selected column becomes len(categories[k]) 0/1 columns in place (minus a dropped category)."""

    name: ClassVar[str] = "onehot"
    fields: ClassVar[tuple[str, ...]] = ("categories", "handle_unknown", "drop")
    categories: tuple[tuple[float, ...], ...] = ()
    handle_unknown: str = "error"
    # Per column: index into categories[k] of the category encoded as all zeros, or -1 for none.
    drop: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], step: int) -> "OneHot":
        _check_fields(config, cls.fields, step)
        categories = _float_lists(_require(config, "categories", step), step, "categories")
        for column, cats in enumerate(categories):
            if not cats:
                raise ConfigError(_where(step, f"categories[{column}]"), "needs at least one category")
            for index in range(1, len(cats)):
                if cats[index] <= cats[index - 1]:
                    raise ConfigError(_where(step, f"categories[{column}]"),
                                      f"not strictly increasing: {cats[index - 1]!r} then {cats[index]!r}")
        handle_unknown = config.get("handle_unknown", "error")
        if handle_unknown not in HANDLE_UNKNOWN:
            raise ConfigError(_where(step, "handle_unknown"), f"{handle_unknown!r} is not one of {HANDLE_UNKNOWN}")
        drop_raw = config.get("drop", [-1] * len(categories))
        if not isinstance(drop_raw, Sequence) or len(drop_raw) != len(categories):
            raise ConfigError(_where(step, "drop"),
                              f"expected one index per column ({len(categories)}), got {drop_raw!r}")
        for column, index in enumerate(drop_raw):
            if isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < len(categories[column]):
                raise ConfigError(_where(step, f"drop[{column}]"), f"{index!r} is not -1 or a category index")
        return cls(_columns(config.get("columns"), step), categories, handle_unknown, tuple(drop_raw))


# Registry by config name; the compiler and every backend agree on this set.
OPS: dict[str, type[Op]] = {
    cls.name: cls for cls in (Select, Impute, Standardize, MinMax, Clip, Log1p, Bucketize, OneHot)
}


def op_from_config(config: Any, step: int) -> Op:
    """Build one validated op from its config dict; raises UnknownOpError or ConfigError."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"steps[{step}]", f"expected a mapping with an 'op' field, got {config!r}")
    name = config.get("op")
    if name not in OPS:
        raise UnknownOpError(step, name, tuple(OPS))
    return OPS[name].from_config(config, step)
