"""The cascade evaluation's datasets: scikit-learn's bundled tables, split by seed into train, tune and eval rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from infergate.bench.cascade_models import INPUT, train_logistic, train_mlp, write_model
from infergate.cascade.splits import stratified_split

logger = logging.getLogger(__name__)

SPLIT_SEED = 0  # the one seed of every split here; fixed before any result was seen
MLP_SEED = 0  # random_state of every large model
SMALL_TABLE_FRACTIONS = (0.4, 0.3, 0.3)  # train, tune, eval: a 150-row table keeps ~45 rows per held-out part
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)  # 1,797 images: 360 evaluation rows, one row 0.28 pp
LABELS = "y"  # the npz key of the int labels, as `infergate calibrate` and `cascade tune` read

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset scikit-learn ships offline and the two models the evaluation trains on it."""

    name: str  # also the cascade's name prefix in the model repository
    loader: str  # sklearn.datasets function name
    fractions: tuple[float, float, float]  # train, tune, eval
    large_hidden: tuple[int, ...]  # the large MLP's hidden widths
    large_epochs: int  # Adam passes over the training rows


DATASETS = {
    "breast_cancer": DatasetSpec("breast_cancer", "load_breast_cancer", SMALL_TABLE_FRACTIONS, (256, 256), 200),
    "wine": DatasetSpec("wine", "load_wine", SMALL_TABLE_FRACTIONS, (256, 256), 200),
    "iris": DatasetSpec("iris", "load_iris", SMALL_TABLE_FRACTIONS, (256, 256), 200),
    # The load test's pair: a large model whose compute matters (mlp_large's shape, trained).
    "digits_mlp": DatasetSpec("digits_mlp", "load_digits", DIGITS_FRACTIONS, (1024, 1024, 1024), 30),
}


@dataclass(frozen=True)
class Parts:
    """Row indices of each part of one dataset; disjoint and together every row."""

    train: IndexArray
    tune: IndexArray
    eval: IndexArray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "tune": len(self.tune), "eval": len(self.eval)}


def split_parts(labels: npt.ArrayLike, fractions: tuple[float, float, float], seed: int = SPLIT_SEED) -> Parts:
    """Stratified train / tune / eval rows (cascade.splits, so the same labels and seed give the same parts)."""
    train, tune, held_out = stratified_split(labels, fractions, seed)
    return Parts(train, tune, held_out)


def load_table(spec: DatasetSpec) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """The dataset's features (FP32) and int labels."""
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, spec.loader)(return_X_y=True)
    return np.asarray(x, np.float32), np.asarray(y, np.int64)


def write_npz(path: Path, x: npt.ArrayLike, y: npt.ArrayLike, input_names: tuple[str, ...] = (INPUT,)) -> Path:
    """The tune command's data file: the features under each input name, the labels under `y`."""
    arrays: dict[str, np.ndarray] = {name: np.asarray(x, np.float32) for name in input_names}
    arrays[LABELS] = np.asarray(y, np.int64)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def small_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_small"


def large_name(spec: DatasetSpec) -> str:
    return f"{spec.name}_large"


def build_dataset(spec: DatasetSpec, repository: Path, data_dir: Path) -> dict[str, object]:
    """Trains both models on the train rows into the repository, writes tune.npz and eval.npz; returns facts."""
    x, y = load_table(spec)
    classes = int(y.max()) + 1
    parts = split_parts(y, spec.fractions)
    small = train_logistic(x[parts.train], y[parts.train], classes)
    large = train_mlp(x[parts.train], y[parts.train], classes, spec.large_hidden, spec.large_epochs, MLP_SEED)
    write_model(repository, small_name(spec), small)
    write_model(repository, large_name(spec), large)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_npz(data_dir / "tune.npz", x[parts.tune], y[parts.tune])
    write_npz(data_dir / "eval.npz", x[parts.eval], y[parts.eval])
    widths = [layer[0].shape[0] for layer in large] + [classes]
    return {"dataset": spec.name, "loader": f"sklearn.datasets.{spec.loader}", "features": int(x.shape[1]),
            "classes": classes, "rows": parts.sizes(), "split_seed": SPLIT_SEED,
            "small": {"model": small_name(spec), "kind": "logistic regression (ONNX Gemm + Softmax)"},
            "large": {"model": large_name(spec), "kind": f"MLP {'-'.join(map(str, widths))} "
                                                         f"({spec.large_epochs} Adam epochs, ONNX)"}}
