"""Which request a failed batch blames: the batch row an error names, mapped back to the request that sent it."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from infergate.kernels import KernelError
from infergate.models.errors import RowError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do after a batch failed at one of its rows."""

    batch_row: int  # the row of the batch the error named
    failed: int  # index, in batch order, of the request that sent the row: it alone fails
    error: RowError  # its error, naming its own row
    rerun: tuple[int, ...]  # indexes of the other requests, in batch order: run again as one batch


def plan_after_failure(model: str, request_rows: Sequence[int], exc: BaseException) -> FaultPlan | None:
    """The plan for a batch of requests with these row counts that raised `exc`; None when `exc` names no
    row of the batch (or one the error cannot be rebuilt at), so that every request is retried alone."""
    error = as_row_error(model, exc)
    if error is None:
        return None
    located = request_at(request_rows, error.row)
    if located is None:
        return None
    index, own_row = located
    rebuilt = at_row(error, own_row)
    if rebuilt is None:
        return None
    return FaultPlan(error.row, index, rebuilt, tuple(i for i in range(len(request_rows)) if i != index))


def as_row_error(model: str, exc: BaseException) -> RowError | None:
    """`exc` as a RowError when it names a row of the batch: a RowError (feature transforms), or a
    kernels error with a row raised by the runtime itself; None otherwise."""
    if isinstance(exc, RowError):
        return exc
    row = getattr(exc, "row", None)
    if isinstance(exc, KernelError) and isinstance(row, int):
        return RowError(f"model '{model}'", row, exc)
    return None


def request_at(request_rows: Sequence[int], batch_row: int) -> tuple[int, int] | None:
    """(index of the request, its own row) holding `batch_row`, the batch being the requests' rows
    concatenated in order; None when the row is outside the batch."""
    if batch_row < 0:
        return None
    offset = 0
    for index, rows in enumerate(request_rows):
        if batch_row < offset + rows:
            return index, batch_row - offset
        offset += rows
    return None


def at_row(error: RowError, row: int) -> RowError | None:
    """The same error at another row, or None when its cause cannot be rebuilt.

    The cause is rebuilt from its own fields: kernels errors keep each constructor argument as an
    attribute of the same name (kernels/errors.py), so the message is theirs, at the new row."""
    if row == error.row:
        return error
    cause = error.cause
    try:
        names = inspect.signature(type(cause)).parameters
        fields = {name: getattr(cause, name) for name in names}
        if "row" not in fields:
            return None
        fields["row"] = row
        rebuilt = type(cause)(**fields)
    except (AttributeError, TypeError, ValueError):
        logger.debug("cannot rebuild %r at row %d", cause, row, exc_info=True)
        return None
    return RowError(error.where, row, rebuilt)
