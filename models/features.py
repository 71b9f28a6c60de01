"""FeatureStage: a model's declared feature transforms, from the raw inputs clients send to the runtime's inputs.

A model declares its transforms in a JSON file beside config.pbtxt (`feature_pipeline.json`, or the file
or inline JSON named by `parameters { key: "feature_pipeline" ... }`). Two forms are accepted:

- a kernels config as `infergate.kernels.save` writes it (a pipeline or a token hasher): it feeds the
  model's only input, and the raw input keeps that input's name;
- {"format": "infergate.features/1", "inputs": {MODEL_INPUT: [SOURCE, ...], ...}} where each SOURCE is
  {"name": RAW_INPUT, "datatype": "FP32"|"FP64"|"BYTES", "transform": KERNELS_CONFIG} and a model input's
  sources are concatenated column-wise in order (a ColumnTransformer of numeric columns and hashed tokens).

Model inputs no source feeds are passed through unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergate.kernels import KernelError, Pipeline, TokenHasher, from_config
from infergate.kernels.pipeline import PIPELINE_FILENAME
from infergate.models.config import ModelSpec, TensorSpec
from infergate.models.datatypes import NUMPY_DTYPES, zeros
from infergate.models.errors import ConfigError, InvalidInput, RowError

logger = logging.getLogger(__name__)

FEATURES_PARAMETER = "feature_pipeline"  # config.pbtxt parameter: a file beside config.pbtxt, or inline JSON
FORMAT = "infergate.features/1"  # the long form's "format" tag
PIPELINE_DATATYPES = ("FP32", "FP64")  # raw datatypes a numeric pipeline accepts
# Model input datatype -> the pipeline output_dtype that feeds it.
OUTPUT_DATATYPES = {datatype: NUMPY_DTYPES[datatype].name for datatype in PIPELINE_DATATYPES}
WARMUP_RUNS = 3  # full-batch transform runs at load; the fastest is the transform's share of a batch

Transform = Pipeline | TokenHasher


@dataclass(frozen=True, slots=True)
class FeatureSource:
    """One raw input and the transform that turns it into columns of a model input."""

    raw: TensorSpec
    transform: Transform

    @property
    def width(self) -> int:
        return self.transform.n_features_out if isinstance(self.transform, Pipeline) else self.transform.n_features


@dataclass(frozen=True, slots=True)
class FeatureTarget:
    """A model input built from its sources, concatenated column-wise."""

    name: str
    dtype: np.dtype
    sources: tuple[FeatureSource, ...]
    width: int


class FeatureStage:
    """Runs a model's transforms on each assembled batch; `assemble` is the batcher's AssembleFn."""

    def __init__(self, model: str, targets: list[FeatureTarget], client_inputs: list[TensorSpec],
                 is_batched: bool) -> None:
        self.model = model
        self.targets = targets
        self.client_inputs = client_inputs  # what ModelMetadata shows and requests are checked against
        self.is_batched = is_batched
        fed = {s.raw.name for t in targets for s in t.sources}
        self._passthrough = [t.name for t in client_inputs if t.name not in fed]

    def assemble(self, requests: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The runtime's inputs for a batch of requests (each request's inputs with the batch dim first).

        Raises InvalidInput naming the raw input, row, column and value a transform rejected.
        """
        assembled = {name: _concat([r[name] for r in requests]) for name in self._passthrough if name in requests[0]}
        for target in self.targets:
            parts = [self._run(source, [r[source.raw.name] for r in requests]) for source in target.sources]
            value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            assembled[target.name] = value if self.is_batched else value[0]
        return assembled

    def _run(self, source: FeatureSource, values: list[np.ndarray]) -> np.ndarray:
        if not self.is_batched:
            values = [v[np.newaxis] for v in values]
        try:
            if isinstance(source.transform, Pipeline):
                return source.transform.transform(_concat(values))
            return source.transform.transform(_token_rows(values))
        except KernelError as exc:
            where = f"model '{self.model}' input '{source.raw.name}'"
            row = getattr(exc, "row", None)
            if isinstance(row, int):
                # The batcher maps the row back to the one request that sent it.
                raise RowError(where, row, exc) from None
            raise InvalidInput(f"{where}: {exc.message}") from None

    def warm_up(self, rows: int) -> float:
        """Compiles and runs every transform once, then times a full batch of zeros: the fastest of
        WARMUP_RUNS in seconds, or inf when zeros are not a valid input (e.g. an unseen category)."""
        for target in self.targets:
            for source in target.sources:
                source.transform.warm_up()
        batch = {spec.name: _zeros(spec, rows) if self.is_batched else _zeros(spec, 1)[0]
                 for spec in self.client_inputs}
        fastest_s = float("inf")
        for _ in range(WARMUP_RUNS):
            start = time.perf_counter()
            try:
                self.assemble([batch])
            except InvalidInput:
                return float("inf")
            fastest_s = min(fastest_s, time.perf_counter() - start)
        return fastest_s


def _concat(values: list[np.ndarray]) -> np.ndarray:
    return values[0] if len(values) == 1 else np.concatenate(values)


def _token_rows(values: list[np.ndarray]) -> Any:
    """Rows of tokens across requests; requests may send different token counts per row."""
    if len(values) == 1:
        return values[0]
    if all(v.shape[1:] == values[0].shape[1:] for v in values):
        return np.concatenate(values)
    return [row for value in values for row in value]


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray:
    return zeros((rows, *(1 if d == -1 else d for d in spec.dims)), spec.datatype)


def find_declaration(spec: ModelSpec, model_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(where, parsed JSON) of the model's feature declaration, or None when it declares none."""
    value = spec.parameters.get(FEATURES_PARAMETER)
    if value is None:
        path = model_dir / PIPELINE_FILENAME
        if not path.exists():
            return None
        return str(path), _read_json(path, spec.name)
    if value.lstrip().startswith("{"):
        where = f"parameter '{FEATURES_PARAMETER}'"
        try:
            return where, json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model '{spec.name}': {where} is not valid JSON: {exc}") from None
    path = (model_dir / value).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ConfigError(f"model '{spec.name}': parameter '{FEATURES_PARAMETER}' is '{value}'; expected a file "
                          f"inside the model's folder {model_dir} or inline JSON")
    if not path.is_file():
        raise ConfigError(f"model '{spec.name}': parameter '{FEATURES_PARAMETER}' names {path}, which does not exist")
    return str(path), _read_json(path, spec.name)


def _read_json(path: Path, model: str) -> dict[str, Any]:
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model '{model}': feature pipeline {path} cannot be read as JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"model '{model}': feature pipeline {path} must hold a JSON object, not "
                          f"{type(parsed).__name__}")
    return parsed


def build_stage(spec: ModelSpec, where: str, declaration: dict[str, Any]) -> FeatureStage:
    """Validates a declaration against the model's (resolved) inputs; raises ConfigError naming the field."""
    model_inputs = {t.name: t for t in spec.inputs}
    context = f"model '{spec.name}': feature pipeline {where}"
    if declaration.get("format") == FORMAT:
        extra = sorted(set(declaration) - {"format", "inputs"})
        if extra:
            raise ConfigError(f"{context}: unknown field(s) {', '.join(extra)}; expected 'format' and 'inputs'")
        inputs = declaration.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise ConfigError(f"{context}: 'inputs' must map model input names to lists of sources, got {inputs!r}")
        declared = {name: _sources(context, name, value) for name, value in inputs.items()}
    else:
        if len(model_inputs) != 1:
            raise ConfigError(f"{context}: a single pipeline feeds a model with one input, but the model has "
                              f"{sorted(model_inputs)}; use the {FORMAT!r} form to say which input each feeds")
        name = next(iter(model_inputs))
        transform = _transform(context, declaration)
        datatype = "BYTES" if isinstance(transform, TokenHasher) else "FP32"
        declared = {name: [(name, datatype, transform)]}
    targets = []
    for name, sources in declared.items():
        model_input = model_inputs.get(name)
        if model_input is None:
            raise ConfigError(f"{context}: 'inputs' names '{name}', which is not an input of the model "
                              f"(inputs: {sorted(model_inputs)})")
        targets.append(_target(context, model_input, sources))
    client_inputs = _client_inputs(context, spec.inputs, targets)
    return FeatureStage(spec.name, targets, client_inputs, spec.max_batch_size > 0)


def _sources(context: str, model_input: str, value: Any) -> list[tuple[str, str, Transform]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{context}: inputs['{model_input}'] must be a non-empty list of sources, got {value!r}")
    sources = []
    for index, source in enumerate(value):
        where = f"{context}: inputs['{model_input}'][{index}]"
        if not isinstance(source, dict):
            raise ConfigError(f"{where} must be an object with 'name', 'datatype' and 'transform', got {source!r}")
        extra = sorted(set(source) - {"name", "datatype", "transform"})
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
        name = source.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' must be the raw input's name, got {name!r}")
        transform = _transform(where, source.get("transform"))
        default = "BYTES" if isinstance(transform, TokenHasher) else "FP32"
        datatype = source.get("datatype", default)
        allowed = ("BYTES",) if isinstance(transform, TokenHasher) else PIPELINE_DATATYPES
        if datatype not in allowed:
            raise ConfigError(f"{where}: 'datatype' is {datatype!r}; a {type(transform).__name__} takes "
                              f"{' or '.join(allowed)}")
        sources.append((name, datatype, transform))
    return sources


def _transform(where: str, config: Any) -> Transform:
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: 'transform' must be a kernels pipeline or hash config, got {config!r}")
    try:
        return from_config(config)
    except KernelError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _target(context: str, model_input: TensorSpec, sources: list[tuple[str, str, Transform]]) -> FeatureTarget:
    output_dtype = OUTPUT_DATATYPES.get(model_input.datatype)
    if output_dtype is None or len(model_input.dims) != 1:
        raise ConfigError(f"{context}: model input '{model_input.name}' is {model_input.datatype} "
                          f"{list(model_input.dims)}; transforms feed FP32 or FP64 inputs of one dimension "
                          "(features) per row")
    built = []
    for name, datatype, transform in sources:
        if transform.output_dtype.name != output_dtype:
            raise ConfigError(f"{context}: the transform of '{name}' outputs {transform.output_dtype.name}, but "
                              f"model input '{model_input.name}' is {model_input.datatype}; set its output_dtype "
                              f"to '{output_dtype}'")
        dims = (-1,) if isinstance(transform, TokenHasher) else (transform.n_features_in,)
        built.append(FeatureSource(TensorSpec(name, datatype, dims), transform))
    width = sum(s.width for s in built)
    expected = model_input.dims[0]
    if expected != -1 and width != expected:
        widths = " + ".join(f"{s.width} ({s.raw.name})" for s in built)
        raise ConfigError(f"{context}: model input '{model_input.name}' takes {expected} features per row, but its "
                          f"transforms produce {widths} = {width}")
    return FeatureTarget(model_input.name, np.dtype(output_dtype), tuple(built), width)


def _client_inputs(context: str, model_inputs: list[TensorSpec], targets: list[FeatureTarget]) -> list[TensorSpec]:
    """The inputs clients send, in the model's input order: raw sources in place of the inputs they feed."""
    by_target = {t.name: t for t in targets}
    client: list[TensorSpec] = []
    for model_input in model_inputs:
        target = by_target.get(model_input.name)
        client.extend([s.raw for s in target.sources] if target else [model_input])
    names = [t.name for t in client]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{context}: raw input name(s) {duplicates} are used twice (or clash with a model input "
                          "passed through)")
    return client
