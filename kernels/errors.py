"""Errors raised by feature-transform pipelines: one base class, each message built from fields."""

import logging
from typing import Any

logger = logging.getLogger(__name__)


class KernelError(ValueError):
    """Base of every pipeline error; the server maps it to INVALID_ARGUMENT.

    Subclasses keep the offending values as attributes so callers can act on them
    without parsing the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(KernelError):
    """A pipeline config (or fitted estimator) that cannot be loaded."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"invalid pipeline config at {where}: {problem}")


class UnknownOpError(ConfigError):
    """A config step names an op that no backend implements."""

    def __init__(self, step: int, op: object, known: tuple[str, ...]) -> None:
        self.step = step
        self.op = op
        super().__init__(f"steps[{step}]", f"unknown op {op!r}; expected one of {', '.join(known)}")


class UnsupportedEstimatorError(KernelError):
    """from_sklearn met an estimator (or an estimator setting) it cannot translate."""

    def __init__(self, estimator: str, reason: str) -> None:
        self.estimator = estimator
        self.reason = reason
        super().__init__(f"cannot translate {estimator}: {reason}")


class ShapeError(KernelError):
    """A batch whose rank or column count does not match the pipeline."""

    def __init__(self, expected: str, got: tuple[int, ...]) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"input has shape {got}; expected {expected}")


class InputTypeError(KernelError):
    """A batch that is not numeric (or a token that is neither str nor bytes)."""

    def __init__(self, what: str, row: int | None = None, column: int | None = None, value: Any = None) -> None:
        self.what = what
        self.row = row
        self.column = column
        self.value = value
        where = "" if row is None else f" at row {row}, column {column}: {value!r}"
        super().__init__(f"{what}{where}")


class NonFiniteInputError(KernelError):
    """An infinite input value; no op accepts +-inf (scikit-learn rejects it too)."""

    def __init__(self, row: int, column: int, value: float) -> None:
        self.row = row
        self.column = column
        self.value = value
        super().__init__(f"input column {column} is {value!r} at row {row}; infinite values are not accepted")


class NonFiniteOutputError(KernelError):
    """A NaN/inf that reached the output: NaN with no imputer, log1p below -1, or overflow."""

    def __init__(self, row: int, column: int, source_column: int, value: float) -> None:
        self.row = row
        self.column = column
        self.source_column = source_column
        self.value = value
        src = f" (from input column {source_column})" if source_column >= 0 else ""
        super().__init__(
            f"output column {column}{src} is {value!r} at row {row}: a NaN input where the pipeline "
            "has no imputer, a log1p below -1, or an overflow"
        )


class UnknownCategoryError(KernelError):
    """A one-hot input value outside the fitted categories (handle_unknown='error')."""

    def __init__(self, row: int, column: int, value: float) -> None:
        self.row = row
        self.column = column
        self.value = value
        super().__init__(f"input column {column} has unknown category {value!r} at row {row}")
