"""Drift: per-feature population stability index (PSI) of live inputs against a stored reference profile."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infergate.server.telemetry.windows import SLOT_S, WINDOW_SLOTS, SlidingWindows

logger = logging.getLogger(__name__)

PROFILE_FILE = "drift_profile.json"  # beside the model's config.pbtxt
PROFILE_FORMAT = 1
PSI_FLOOR = 1e-4  # proportions are floored here so an empty bin on either side stays finite
MIN_ROWS = 200  # rows in the window before PSI is reported: fewer give noise, not drift
PSI_WINDOW = "5m"  # live traffic is compared over the last five minutes


@dataclass(frozen=True, slots=True)
class DriftProfile:
    """Training-data bins of one model input: edges per feature (padded with +inf) and their proportions."""

    input: str
    features: list[str]  # feature names, "0".. by default (labels: from the profile, never a request)
    edges: np.ndarray  # [features, n_edges], ascending, +inf padded
    expected: np.ndarray  # [features, n_edges + 1] proportions per bin, each row sums to 1
    rows: int  # training rows it was built from


def build_profile(data: np.ndarray, input_name: str, bins: int = 10) -> DriftProfile:
    """Bin edges at the data's quantiles (deduplicated for discrete features), and each bin's share."""
    from infergate.kernels.histogram import bin_counts

    data = np.asarray(data, np.float64).reshape(len(data), -1)
    if len(data) == 0:
        raise ValueError("the training data has no rows")
    per_feature = []
    for column in data.T:
        finite = column[np.isfinite(column)]
        quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if len(finite) else np.array([])
        per_feature.append(np.unique(quantiles))
    width = max(max(len(e) for e in per_feature), 1)
    edges = np.full((data.shape[1], width), np.inf)
    for i, e in enumerate(per_feature):
        edges[i, :len(e)] = e
    counts = bin_counts(data, edges)
    expected = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return DriftProfile(input_name, [str(i) for i in range(data.shape[1])], edges, expected, len(data))


def save_profile(profile: DriftProfile, model_dir: Path) -> Path:
    features = [{"name": name, "edges": [e for e in edges if np.isfinite(e)], "expected": expected.tolist()}
                for name, edges, expected in zip(profile.features, profile.edges, profile.expected)]
    path = model_dir / PROFILE_FILE
    # Written beside and renamed over: a reader, or a server loading the model, never sees half a profile,
    # and a failed write leaves the previous one.
    staging = path.with_name(f".{PROFILE_FILE}.{os.getpid()}.tmp")
    try:
        staging.write_text(json.dumps({"format": PROFILE_FORMAT, "input": profile.input, "rows": profile.rows,
                                       "features": features}, indent=1), encoding="utf-8")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def load_profile(path: Path) -> DriftProfile:
    """Reads a profile; raises ValueError saying what is wrong with it."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        features = doc["features"]
        width = max(max((len(f["edges"]) for f in features), default=0), 1)
        edges = np.full((len(features), width), np.inf)
        expected = np.zeros((len(features), width + 1))
        for i, feature in enumerate(features):
            edges[i, :len(feature["edges"])] = feature["edges"]
            expected[i, :len(feature["expected"])] = feature["expected"]
        return DriftProfile(str(doc["input"]), [str(f["name"]) for f in features], edges, expected,
                            int(doc.get("rows", 0)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a drift profile ({type(exc).__name__}: {exc})") from None


def psi(expected: np.ndarray, actual_counts: np.ndarray) -> np.ndarray:
    """PSI per feature: sum over bins of (a - e) * ln(a / e), a and e proportions floored at PSI_FLOOR."""
    actual = actual_counts / np.maximum(actual_counts.sum(axis=-1, keepdims=True), 1)
    a, e = np.maximum(actual, PSI_FLOOR), np.maximum(expected, PSI_FLOOR)
    result: np.ndarray = ((a - e) * np.log(a / e)).sum(axis=-1)
    return result


class DriftMonitor:
    """Histograms sampled batches of one input and reports PSI per feature over the last five minutes."""

    def __init__(self, model: str, profile: DriftProfile, threshold: float,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        from infergate.kernels.histogram import bin_counts  # compiles (or loads) the kernel now, at load

        self._bin_counts = bin_counts
        self.model = model
        self.profile = profile
        self.threshold = threshold
        self._clock_ns = clock_ns
        self._windows = SlidingWindows(profile.expected.shape, start_ns=clock_ns(), slot_s=SLOT_S)
        self._above: set[int] = set()  # features whose PSI is over the threshold (warned once per crossing)

    def fold(self, pending: deque[list[Any]]) -> None:
        """Adds the sampled batches' rows (each batch a list of request inputs) to the histograms."""
        batches = [pending.popleft() for _ in range(len(pending))]
        arrays = [inputs[self.profile.input] for batch in batches for inputs in batch if self.profile.input in inputs]
        if not arrays:
            return
        # Rows of the profile's width, with or without a batch dim (a model with max_batch_size 0).
        width = len(self.profile.features)
        values = np.concatenate([np.asarray(a).reshape(-1, width) for a in arrays])
        self._windows.add(self._clock_ns(), self._bin_counts(values, self.profile.edges))
        self._check()

    def current(self) -> dict[str, float]:
        """PSI per feature name over the window; empty until it holds MIN_ROWS rows."""
        counts = self._windows.window(WINDOW_SLOTS[PSI_WINDOW], self._clock_ns())
        if counts.size == 0 or counts.sum(axis=1).min() < MIN_ROWS:
            return {}
        return dict(zip(self.profile.features, (float(v) for v in psi(self.profile.expected, counts))))

    def _check(self) -> None:
        for index, (name, value) in enumerate(self.current().items()):
            if value > self.threshold and index not in self._above:
                self._above.add(index)
                logger.warning("model '%s' input '%s' feature %s drifted: PSI %.3f over the last %s is above %.3g",
                               self.model, self.profile.input, name, value, PSI_WINDOW, self.threshold)
            elif value <= self.threshold:
                self._above.discard(index)


def monitor_for(model: str, model_dir: Path, input_dims: dict[str, tuple[int, ...]],
                threshold: float) -> tuple[DriftMonitor | None, str]:
    """The model's drift monitor, or None and why not ("" when it simply has no profile)."""
    path = model_dir / PROFILE_FILE
    if not path.exists():
        return None, ""
    try:
        profile = load_profile(path)
    except ValueError as exc:
        return None, str(exc)
    if why_not := profile_mismatch(profile, path, input_dims):
        return None, why_not
    return DriftMonitor(model, profile, threshold), ""


def profile_mismatch(profile: DriftProfile, path: Path, input_dims: dict[str, tuple[int, ...]]) -> str:
    """Why the profile cannot describe the model's inputs (by name, dims), or "" when it can."""
    dims = input_dims.get(profile.input)
    if dims is None:
        return f"{path}: input '{profile.input}' is not an input of the model ({sorted(input_dims)})"
    if fixed_width(dims) != len(profile.features):
        return f"{path}: {len(profile.features)} features, but input '{profile.input}' has dims {list(dims)}"
    return ""


def fixed_width(dims: tuple[int, ...]) -> int | None:
    """Features per row of an input with these dims, or None when a dim is variable (-1)."""
    return int(np.prod(dims)) if all(d > 0 for d in dims) else None
