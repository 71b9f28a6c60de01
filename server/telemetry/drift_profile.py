"""`infergate drift-profile`: a model's drift profile from training rows, written only once they fit the model."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from infergate.server.telemetry.drift import (
    PROFILE_FILE,
    DriftProfile,
    build_profile,
    fixed_width,
    profile_mismatch,
    save_profile,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"  # models/config.py's name for it
MIN_BINS = 2  # one bin holds every row: it can show no shift


class Refused(ValueError):
    """Why no profile is written; the message names the flag and the value."""


def build_profile_command(model_dir: Path, data_path: Path, input_name: str | None, bins: int) -> int:
    """Writes <model_dir>/drift_profile.json from a .npy of training rows; 2 and a message when refused."""
    try:
        path, profile = _checked_profile(model_dir, data_path, input_name, bins)
    except Refused as exc:
        kept = model_dir / PROFILE_FILE
        print(f"infergate drift-profile: {exc}" + (f"; {kept} is unchanged" if kept.is_file() else ""),
              file=sys.stderr)
        return 2
    save_profile(profile, model_dir)
    print(f"{path}: input '{profile.input}', {len(profile.features)} features, {profile.rows} rows, "
          f"up to {bins} bins each")
    return 0


def _checked_profile(model_dir: Path, data_path: Path, input_name: str | None, bins: int) -> tuple[Path, DriftProfile]:
    if bins < MIN_BINS:
        raise Refused(f"--bins {bins}: expected at least {MIN_BINS}")
    inputs = model_inputs(model_dir)
    if input_name is None:
        if not inputs:
            raise Refused(f"--model-dir {model_dir}: {model_dir / CONFIG_FILE} names no input; pass --input NAME")
        input_name = next(iter(inputs))
    elif inputs and input_name not in inputs:
        raise Refused(f"--input '{input_name}': not an input of model '{model_dir.name}' "
                      f"(its inputs: {', '.join(inputs)})")
    data = _load(data_path)
    if why := data_problem(data, input_name, inputs.get(input_name), model_dir.name):
        raise Refused(f"--data {data_path}: {why}")
    try:
        profile = build_profile(data, input_name, bins)
    except ValueError as exc:
        raise Refused(f"--data {data_path}: {exc}") from None
    path = model_dir / PROFILE_FILE
    if inputs and (why := profile_mismatch(profile, path, inputs)):  # the server's own check, before writing
        raise Refused(why)
    return path, profile


def model_inputs(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """The dims of each input config.pbtxt names, in order (empty without a config); raises Refused."""
    from infergate.models.config import read_config
    from infergate.models.errors import ConfigError

    if not model_dir.is_dir():
        raise Refused(f"--model-dir {model_dir}: not a folder; expected a model's folder in the repository")
    if not (model_dir / CONFIG_FILE).is_file():
        models = sorted(p.name for p in model_dir.iterdir() if (p / CONFIG_FILE).is_file())
        if models:
            raise Refused(f"--model-dir {model_dir}: a model repository, not a model's folder (it has no "
                          f"{CONFIG_FILE}); expected one of its models: --model-dir {model_dir / models[0]}, "
                          f"or another of {', '.join(models)}")
        if not any(p.is_dir() and p.name.isdigit() for p in model_dir.iterdir()):
            raise Refused(f"--model-dir {model_dir}: neither a {CONFIG_FILE} nor a version folder; expected a "
                          "model's folder in the repository")
        return {}  # a model without a config: the server checks the profile when it loads it
    try:
        config = read_config(model_dir)
    except ConfigError as exc:
        raise Refused(f"--model-dir {model_dir}: {exc.message}") from None
    return {tensor.name: tuple(int(d) for d in tensor.dims) for tensor in config.input}


def _load(data_path: Path) -> np.ndarray:
    try:
        data: np.ndarray = np.load(data_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot read --data {data_path}: {exc}") from None
    return data


def data_problem(data: np.ndarray, input_name: str, dims: tuple[int, ...] | None, model: str) -> str:
    """Why these training rows cannot profile the input (its config dims, None when unknown), or ""."""
    if not isinstance(data, np.ndarray) or data.ndim == 0:
        return "expected an array [rows, features], not a single value"
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_) or np.iscomplexobj(data):
        return f"dtype {data.dtype}; expected real numbers"
    if len(data) == 0:
        return "the training data has no rows"
    features = int(np.prod(data.shape[1:]))
    if dims is not None:
        width = fixed_width(dims)
        if width is None:
            return (f"input '{input_name}' of model '{model}' has variable dims {list(dims)}: drift monitoring "
                    "needs fixed ones")
        if features != width:
            return (f"{features} features per row (shape {list(data.shape)}), but input '{input_name}' of model "
                    f"'{model}' takes {width} (dims {list(dims)})")
    rows = data.reshape(len(data), -1)
    empty = [i for i in range(features) if not np.isfinite(rows[:, i]).any()]
    if empty:
        named = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        return f"feature{'s' if len(empty) > 1 else ''} {named}: no finite values"
    return ""
