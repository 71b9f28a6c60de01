"""Labelled data for the offline commands: an .npz of arrays named after a model's inputs plus `y`, checked."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import IndexArray, as_labels, check_same_rows
from infergate.cascade.errors import CascadeError
from infergate.cascade.model_config import TensorLike
from infergate.models.datatypes import NUMPY_DTYPES

LABELS = "y"  # the .npz array of integer class labels, one per row


@dataclass(frozen=True, slots=True)
class LabelledData:
    """Model inputs (batch dim first) and the class label of every row."""

    inputs: dict[str, npt.NDArray[Any]]
    labels: IndexArray
    source: str  # the file it came from, for messages

    @property
    def n_rows(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: IndexArray) -> LabelledData:
        """The given rows only, in that order."""
        return LabelledData({name: value[rows] for name, value in self.inputs.items()}, self.labels[rows],
                            f"{self.source} rows")


def read_labelled(path: Path, inputs: Sequence[TensorLike], model: str) -> LabelledData:
    """Reads `path`, keeping the arrays `inputs` name, each as its datatype, and `y`; raises CascadeError."""
    arrays = _load(path)
    expected = f"arrays named after model {model!r}'s inputs ({', '.join(t.name for t in inputs)}) and {LABELS!r}"
    for name in [*(t.name for t in inputs), LABELS]:
        if name not in arrays:
            raise CascadeError(f"{path}: has no array {name!r}, expected {expected}; it has {sorted(arrays)}")
    checked = {t.name: _as_input(path, t, arrays[t.name]) for t in inputs}
    rows = check_same_rows({f"{path}: {LABELS}": len(np.atleast_1d(arrays[LABELS])),
                            **{f"{path}: {name}": len(value) for name, value in checked.items()}})
    if rows == 0:
        raise CascadeError(f"{path}: {LABELS} has 0 rows, expected at least 1")
    return LabelledData(checked, as_labels(f"{path}: {LABELS}", arrays[LABELS]), str(path))


def check_label_range(data: LabelledData, n_classes: int) -> None:
    """Refuses labels outside [0, n_classes), naming the file and the first bad row."""
    as_labels(f"{data.source}: {LABELS}", data.labels, n_classes=n_classes)


def _load(path: Path) -> Mapping[str, npt.NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise CascadeError(f"{path}: a single .npy array, expected an .npz of named arrays")
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, CascadeError):
            raise
        raise CascadeError(f"{path}: cannot be read as an .npz ({exc}), expected np.savez output") from None


def _as_input(path: Path, tensor: TensorLike, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The array as the input's datatype, refusing a row shape or a dtype kind the model cannot take."""
    where = f"{path}: {tensor.name}"
    row_shape = tuple(value.shape[1:])
    dims = tuple(tensor.dims)
    if value.ndim == 0 or len(row_shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, row_shape)):
        raise CascadeError(f"{where} has shape {list(value.shape)}, expected [rows, {', '.join(map(str, dims))}] "
                           f"({tensor.datatype})")
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None or dtype.kind not in "biuf":
        raise CascadeError(f"{where}: input datatype {tensor.datatype}, expected a numeric input")
    if value.dtype.kind not in "biuf" or (dtype.kind in "biu" and value.dtype.kind == "f"):
        raise CascadeError(f"{where} has dtype {value.dtype}, expected numbers castable to {tensor.datatype}")
    return np.ascontiguousarray(value, dtype=dtype)
