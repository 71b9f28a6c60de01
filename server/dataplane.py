"""The transport-free data plane: what the service awaits for one decoded request, from a model or a cascade."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from infergate.batching.batcher import Timings
from infergate.batching.stats import ModelStats
from infergate.models.config import ModelSpec, TensorSpec


@dataclass(slots=True)
class ModelIO:
    """Per-model lookup tables for the request path, built once at load."""

    spec: ModelSpec
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    output_names: list[str]
    required_inputs: list[str]
    expected: str = field(default="")  # "['INPUT0', ...]" for error messages

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelIO:
        inputs = {t.name: t for t in spec.inputs}
        return cls(spec, inputs, {t.name: t for t in spec.outputs}, [t.name for t in spec.outputs],
                   [t.name for t in spec.inputs if not t.optional], str(sorted(inputs)))


@dataclass(slots=True)
class DecodedRequest:
    inputs: dict[str, np.ndarray]
    rows: int  # batch size of this request (1 for a model that does not batch)
    output_names: list[str]
    priority: int
    timeout_us: int
    output_regions: dict[str, tuple[str, int, int]]  # output -> (shared memory region, offset, byte_size)


# Response parameter values: what InferParameter's string_param and int64_param carry.
ParameterValue = str | int


@dataclass(slots=True)
class InferResult:
    """One request's answer, before encoding."""

    outputs: Mapping[str, np.ndarray]  # by output name, rows first; at least the requested outputs
    timings: Timings | None = None  # its trip through a batcher, for tracing (a cascade: its first stage's)
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # response parameters
    stage: str = ""  # the cascade stage that answered last ("" for a plain model): the trace's stage


class InferTarget(Protocol):
    """A served model version, plain or a cascade: what ModelInfer, ModelMetadata and ModelStatistics need."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def io(self) -> ModelIO: ...

    @property
    def stats(self) -> ModelStats: ...

    async def infer(self, request: DecodedRequest, deadline_ns: int) -> InferResult:
        """The outputs of a validated request; `deadline_ns` is absolute monotonic, 0 for none.

        Raises InferError (QueueFull, DeadlineExceeded, ModelUnavailable, ...) with the client's status."""
        ...
