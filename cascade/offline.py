"""A repository's model run without a server, through the runtime code the server uses, and its cost per row."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from infergate.cascade.errors import CascadeError
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.repository import LoadedVersion, load_model

logger = logging.getLogger(__name__)

WARMUP_BATCHES = 2  # full batches run and not timed: the first runs pay for allocation and caches
TIMED_BATCHES = 7  # full batches timed; their median is the busy time of one batch

Arrays = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class StageCost:
    """What one inference of a model costs, and how that figure was found."""

    usd_per_inference: float
    source: str  # e.g. "measured in-process: 41.2 us/row busy x 0.0446 USD/h (cpu 1 core(s) x 0.0446)"


# (spec, device) -> (USD per hour of one instance, where that price came from): telemetry's figures.
PriceOf = Callable[[ModelSpec, str], tuple[float, str]]


class StageModel(Protocol):
    """A model the offline commands run: in-process (LocalModel) or on a server (server/remote_model.py)."""

    name: str
    version: str
    inputs: list[TensorSpec]  # what the data file holds, one row's dims each
    outputs: list[TensorSpec]
    max_batch_size: int  # rows per predict call

    def predict(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """All rows' named outputs, computed in batches of at most max_batch_size rows."""
        ...

    def cost(self, inputs: Arrays) -> StageCost:
        """The cost of one inference, measured on full batches of these rows."""
        ...


class LocalModel:
    """One loaded version of a repository model, predicting as the server's batcher does."""

    def __init__(self, loaded: LoadedVersion, price_of: PriceOf) -> None:
        spec = loaded.spec
        if spec.max_batch_size < 1:
            raise CascadeError(f"model {spec.name!r} has max_batch_size {spec.max_batch_size}, expected a model "
                               "that batches (>= 1): the data's rows are its batch dimension")
        self.loaded = loaded
        self.name, self.version = spec.name, loaded.version
        self.inputs, self.outputs = list(spec.inputs), list(spec.outputs)
        self.max_batch_size = spec.max_batch_size
        self._price_of = price_of

    def predict(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        rows = _rows(inputs)
        parts = [self._predict_batch(_slice(inputs, start, start + self.max_batch_size), output_names)
                 for start in range(0, rows, self.max_batch_size)]
        return {name: np.concatenate([part[name] for part in parts]) for name in output_names}

    def cost(self, inputs: Arrays) -> StageCost:
        batch = full_batch(inputs, self.max_batch_size)
        names = [t.name for t in self.outputs]
        for _ in range(WARMUP_BATCHES):
            self._predict_batch(batch, names)
        timings_s = []
        for _ in range(TIMED_BATCHES):
            start_s = time.perf_counter()
            self._predict_batch(batch, names)
            timings_s.append(time.perf_counter() - start_s)
        busy_s_per_row = statistics.median(timings_s) / self.max_batch_size
        usd_per_hour, price_source = self._price_of(self.loaded.spec, self.loaded.runtime.device)
        return StageCost(busy_s_per_row * usd_per_hour / 3600.0,
                         f"measured in-process on {self.loaded.runtime.device}: {busy_s_per_row * 1e6:.3g} us busy "
                         f"per row (median of {TIMED_BATCHES} warm batches of {self.max_batch_size}) x "
                         f"{usd_per_hour:g} USD/h ({price_source})")

    def _predict_batch(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """What the server does with one batch: config reshape (server/codec.py), feature transforms, predict."""
        spec, features = self.loaded.spec, self.loaded.features
        batch = dict(inputs)
        for tensor in spec.inputs:
            if tensor.reshape is not None and tensor.name in batch:
                value = batch[tensor.name]
                batch[tensor.name] = value.reshape(value.shape[:1] + tensor.reshape)
        assembled = features.assemble([batch]) if features is not None else batch
        return self.loaded.runtime.predict(assembled, output_names)


def open_local(repo: Path, name: str, version: int | None, price_of: PriceOf) -> LocalModel:
    """Loads `name` from `repo` (the newest version its policy selects, or `version`) as the server would."""
    loaded = load_model(repo, name)
    if version is None:
        return LocalModel(max(loaded, key=lambda v: int(v.version)), price_of)
    for candidate in loaded:
        if int(candidate.version) == version:
            return LocalModel(candidate, price_of)
    raise CascadeError(f"--version {version}: model {name!r} serves versions {[v.version for v in loaded]}, "
                       "expected one of them")


def full_batch(inputs: Arrays, rows: int) -> dict[str, npt.NDArray[Any]]:
    """The first `rows` rows, the data repeated when it has fewer: a full batch to time."""
    have = _rows(inputs)
    index = np.arange(rows) % have
    return {name: value[index] for name, value in inputs.items()}


def _rows(inputs: Arrays) -> int:
    return len(next(iter(inputs.values())))


def _slice(inputs: Arrays, start: int, stop: int) -> dict[str, npt.NDArray[Any]]:
    return {name: value[start:stop] for name, value in inputs.items()}
