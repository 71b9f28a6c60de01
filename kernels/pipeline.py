"""Pipeline and TokenHasher: validate a batch, run it through the chosen backend, and (de)serialise as config.

Dtype rule: input may be float32 or float64 (integers and bools are widened to float64); every op
computes in float64; the output has the pipeline's output_dtype, float32 unless configured.
"""

import json
import logging
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .auto import get_backend
from .errors import ConfigError, InputTypeError, ShapeError
from .hashing import MAX_FEATURES, pack_tokens
from .ops import Op, op_from_config
from .program import compile_ops, status_error

logger = logging.getLogger(__name__)

FORMAT = "infergate.kernels/1"  # config "format" tag; bump when the meaning of a field changes
PIPELINE_FILENAME = "feature_pipeline.json"  # the file beside a model's config.pbtxt that declares its pipeline
OUTPUT_DTYPES = ("float32", "float64")
PARALLEL_MIN_ELEMENTS = 1 << 17  # input elements below which threads cost more than they save (~2 ms of work)
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def default_threads() -> int:
    """Cores this process may run on (affinity-aware, so a pinned sidecar does not oversubscribe)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _first_non_numeric(arr: np.ndarray) -> tuple[int, int, Any]:
    for (row, column), value in np.ndenumerate(arr):
        # Booleans count as numeric here (they widen to 0.0/1.0 like a bool array does).
        if not isinstance(value, (bool, np.bool_, numbers.Real, np.number)):
            return row, column, value
    return -1, -1, None


def as_batch(X: Any, n_features_in: int) -> np.ndarray:
    """X as a C-contiguous float32/float64 (n, n_features_in) array; copies only when it must."""
    if (type(X) is np.ndarray and X.ndim == 2 and X.dtype in _NATIVE and X.shape[1] == n_features_in
            and X.flags.c_contiguous):
        return X
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as error:
        raise InputTypeError(f"input is not a rectangular numeric array ({error})") from None
    if arr.ndim != 2:
        raise ShapeError(f"2 dimensions (batch, {n_features_in})", arr.shape)
    if arr.shape[1] != n_features_in:
        raise ShapeError(f"(batch, {n_features_in}): {n_features_in} columns", arr.shape)
    if arr.dtype.kind == "O":
        row, column, value = _first_non_numeric(arr)
        if row >= 0:
            raise InputTypeError("non-numeric input", row, column, value)
        arr = arr.astype(np.float64)
    elif arr.dtype.kind in "iub" or (arr.dtype.kind == "f" and arr.dtype not in _NATIVE):
        arr = arr.astype(np.float64)
    elif arr.dtype not in _NATIVE:
        value = arr.flat[0] if arr.size else None
        raise InputTypeError(f"non-numeric input of dtype {arr.dtype}", 0 if arr.size else None, 0, value)
    return np.ascontiguousarray(arr)


def _output_dtype(name: Any) -> np.dtype:
    if name not in OUTPUT_DTYPES:
        raise ConfigError("output_dtype", f"{name!r} is not one of {OUTPUT_DTYPES}")
    return np.dtype(str(name))


def _hash_width(n_features: object) -> int:
    """n_features as an int if it is an integer (Python or NumPy, not bool) in [1, MAX_FEATURES]; else ConfigError."""
    # Typed object, not int: config values are unchecked, and NumPy integers count too.
    if isinstance(n_features, bool) or not isinstance(n_features, numbers.Integral) or not (
            0 < int(n_features) <= MAX_FEATURES):
        raise ConfigError("n_features", f"hash width must be an integer in [1, {MAX_FEATURES}], got {n_features!r}")
    return int(n_features)


class Pipeline:
    """Ops compiled into one fused pass; `transform` is safe to call from many threads at once.

    exact=True compiles each op on its own and divides by a standardize's scale, so results are
    bit-equal to scikit-learn's float64 steps (see compile_ops); from_sklearn sets it when a
    bucketize follows scaling, where an ulp can move a value across a bin edge.
    """

    def __init__(self, steps: Sequence[Op], n_features_in: int, *, output_dtype: str = "float32",
                 backend: str = "auto", n_threads: int | None = None, exact: bool = False) -> None:
        self.steps = tuple(steps)
        self.n_features_in = int(n_features_in)
        self.output_dtype = _output_dtype(output_dtype)
        self.is_exact = bool(exact)
        self.program = compile_ops(list(self.steps), self.n_features_in, exact=self.is_exact)
        self._backend = get_backend(backend)
        self._handle = self._backend.compile(self.program)
        self._run = self._backend.run  # bound once: transform's per-call overhead matters on small batches
        self._n_out = self.program.n_out
        self.n_threads = default_threads() if n_threads is None else max(1, int(n_threads))

    @property
    def backend(self) -> str:
        """Name of the backend that runs this pipeline ('auto' resolved)."""
        return self._backend.name

    @property
    def n_features_out(self) -> int:
        return self.program.n_out

    def with_backend(self, backend: str) -> "Pipeline":
        """The same pipeline on another backend."""
        return Pipeline(self.steps, self.n_features_in, output_dtype=self.output_dtype.name, backend=backend,
                        n_threads=self.n_threads, exact=self.is_exact)

    def warm_up(self) -> None:
        """Run every input dtype once so the first request pays no lazy initialisation (thread pools, caches)."""
        for dtype in _NATIVE:
            X = np.zeros((1, self.n_features_in), dtype=dtype)
            self._backend.run(self._handle, X, np.empty((1, self.program.n_out), self.output_dtype), 1)

    def transform(self, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The transformed batch (n, n_features_out) in output_dtype; raises a KernelError on bad input.

        out, if given, must be a C-contiguous (n, n_features_out) array of output_dtype (a reused batch
        buffer saves the page faults of a fresh allocation); on error its contents are unspecified.
        """
        # The common case (a C-contiguous float ndarray of the right width) is checked inline: on a small
        # batch every attribute lookup and call here is a visible share of the whole transform.
        if (type(X) is np.ndarray and X.ndim == 2 and X.dtype in _NATIVE and X.shape[1] == self.n_features_in
                and X.flags.c_contiguous):
            batch = X
        else:
            batch = as_batch(X, self.n_features_in)
        if out is None:
            out = np.empty((batch.shape[0], self._n_out), dtype=self.output_dtype)
        elif (out.shape != (batch.shape[0], self._n_out) or out.dtype != self.output_dtype
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ShapeError(f"a writable C-contiguous {(batch.shape[0], self._n_out)} {self.output_dtype} output "
                             "buffer", out.shape)
        code, row, column, value = self._run(self._handle, batch, out,
                                             self.n_threads if batch.size >= PARALLEL_MIN_ELEMENTS else 1)
        if code:
            raise status_error(self.program, code, row, column, value)
        return out

    def to_config(self) -> dict[str, Any]:
        """A JSON-ready dict that from_config turns back into an equal pipeline."""
        config: dict[str, Any] = {"format": FORMAT, "kind": "pipeline", "n_features_in": self.n_features_in,
                                  "output_dtype": self.output_dtype.name}
        if self.is_exact:  # written only when set, so configs of default pipelines are unchanged
            config["exact"] = True
        config["steps"] = [op.to_config() for op in self.steps]
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, backend: str = "auto",
                    n_threads: int | None = None) -> "Pipeline":
        """Validate a config dict (see to_config) and build the pipeline; raises ConfigError naming the field."""
        _check_header(config, "pipeline", ("n_features_in", "output_dtype", "exact", "steps"))
        n_features_in = config.get("n_features_in")
        if isinstance(n_features_in, bool) or not isinstance(n_features_in, int) or n_features_in < 1:
            raise ConfigError("n_features_in", f"expected a positive integer, got {n_features_in!r}")
        steps = config.get("steps", [])
        if not isinstance(steps, list):
            raise ConfigError("steps", f"expected a list of op configs, got {steps!r}")
        exact = config.get("exact", False)
        if not isinstance(exact, bool):
            raise ConfigError("exact", f"expected true or false, got {exact!r}")
        ops = [op_from_config(step, index) for index, step in enumerate(steps)]
        return cls(ops, n_features_in, output_dtype=config.get("output_dtype", "float32"), backend=backend,
                   n_threads=n_threads, exact=exact)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save(self, path)


class TokenHasher:
    """Rows of str/bytes tokens -> dense (n, n_features) signed counts, bit-identical to FeatureHasher."""

    def __init__(self, n_features: int = 2**20, *, alternate_sign: bool = True, output_dtype: str = "float32",
                 backend: str = "auto", n_threads: int | None = None) -> None:
        self.n_features = _hash_width(n_features)
        self.alternate_sign = bool(alternate_sign)
        self.output_dtype = _output_dtype(output_dtype)
        self._backend = get_backend(backend)
        self.n_threads = default_threads() if n_threads is None else max(1, int(n_threads))

    @property
    def backend(self) -> str:
        return self._backend.name

    def with_backend(self, backend: str) -> "TokenHasher":
        return TokenHasher(self.n_features, alternate_sign=self.alternate_sign, output_dtype=self.output_dtype.name,
                           backend=backend, n_threads=self.n_threads)

    def warm_up(self) -> None:
        self.transform([["warm-up"]])

    def transform(self, rows: Iterable[Any]) -> np.ndarray:
        """Hash each row (an iterable of str/bytes tokens; str as UTF-8) into one output row."""
        if isinstance(rows, (str, bytes)):
            raise InputTypeError("expected rows of tokens, got a single string")
        if not isinstance(rows, (list, tuple, np.ndarray)):
            rows = list(rows)
        out = np.zeros((len(rows), self.n_features), dtype=self.output_dtype)
        hash_objects = getattr(self._backend, "hash_objects", None)
        if hash_objects is not None:
            code, row, position = hash_objects(rows, self.n_features, self.alternate_sign, out)
            if code == 0:
                return out
            if code == 2:
                raise InputTypeError("each row must be a list of tokens, not a single string", row, -1, rows[row])
            raise InputTypeError("tokens must be str or bytes", row, position, list(rows[row])[position])
        return self.transform_packed(*pack_tokens(rows), out=out)

    def transform_packed(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, row_ptr: np.ndarray,
                         out: np.ndarray | None = None) -> np.ndarray:
        """Hash tokens data[starts[t]:ends[t]] for t in [row_ptr[i], row_ptr[i+1]) into row i (zero-copy path)."""
        n_rows = len(row_ptr) - 1
        if out is None:
            out = np.zeros((n_rows, self.n_features), dtype=self.output_dtype)
        n_threads = self.n_threads if len(starts) >= PARALLEL_MIN_ELEMENTS // 16 else 1
        self._backend.hash_packed(np.ascontiguousarray(data, dtype=np.uint8), np.ascontiguousarray(starts, np.int64),
                                  np.ascontiguousarray(ends, np.int64), np.ascontiguousarray(row_ptr, np.int64),
                                  self.n_features, self.alternate_sign, out, n_threads)
        return out

    def to_config(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": "hash", "n_features": self.n_features, "alternate_sign": self.alternate_sign,
                "output_dtype": self.output_dtype.name}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, backend: str = "auto",
                    n_threads: int | None = None) -> "TokenHasher":
        _check_header(config, "hash", ("n_features", "alternate_sign", "output_dtype"))
        if "n_features" not in config:
            raise ConfigError("n_features", "a hash config needs n_features")
        return cls(config["n_features"], alternate_sign=bool(config.get("alternate_sign", True)),
                   output_dtype=config.get("output_dtype", "float32"), backend=backend, n_threads=n_threads)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save(self, path)


def _check_header(config: Mapping[str, Any], kind: str, fields: tuple[str, ...]) -> None:
    if not isinstance(config, Mapping):
        raise ConfigError("<root>", f"expected a mapping, got {type(config).__name__}")
    if config.get("format", FORMAT) != FORMAT:
        raise ConfigError("format", f"{config.get('format')!r} is not {FORMAT!r}")
    if config.get("kind", kind) != kind:
        raise ConfigError("kind", f"{config.get('kind')!r} where {kind!r} was expected")
    extra = sorted(set(config) - set(fields) - {"format", "kind"})
    if extra:
        raise ConfigError("<root>", f"unknown field(s) {', '.join(extra)}")


def from_config(config: Mapping[str, Any] | str, *, backend: str = "auto",
                n_threads: int | None = None) -> Pipeline | TokenHasher:
    """Build whichever transform a config declares ('kind': 'pipeline' or 'hash'); accepts a JSON string too."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as error:
            raise ConfigError("<root>", f"not valid JSON: {error}") from None
    if not isinstance(config, Mapping):
        raise ConfigError("<root>", f"expected a mapping, got {type(config).__name__}")
    kind = config.get("kind", "pipeline")
    if kind == "hash":
        return TokenHasher.from_config(config, backend=backend, n_threads=n_threads)
    if kind == "pipeline":
        return Pipeline.from_config(config, backend=backend, n_threads=n_threads)
    raise ConfigError("kind", f"{kind!r} is not 'pipeline' or 'hash'")


def save(transform: Pipeline | TokenHasher, path: str | os.PathLike[str]) -> Path:
    """Write the transform's config as JSON; a directory (a model's repository entry) gets PIPELINE_FILENAME."""
    target = Path(path)
    if target.is_dir():
        target = target / PIPELINE_FILENAME
    target.write_text(json.dumps(transform.to_config(), indent=1) + "\n", encoding="utf-8")
    return target


def load(path: str | os.PathLike[str], *, backend: str = "auto",
         n_threads: int | None = None) -> Pipeline | TokenHasher:
    """Read a transform saved by save(); a directory is read at its PIPELINE_FILENAME."""
    source = Path(path)
    if source.is_dir():
        source = source / PIPELINE_FILENAME
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(source), f"cannot read: {error.strerror}") from None
    return from_config(text, backend=backend, n_threads=n_threads)
