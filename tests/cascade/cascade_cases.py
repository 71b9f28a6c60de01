"""Synthetic scores shared by the cascade tests (conftest is not importable by name)."""

from __future__ import annotations

import numpy as np

from infergate.cascade.arrays import softmax


def labelled_logits(n_rows: int, n_classes: int, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(logits): logits that are calibrated at T = 1 by construction."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(0.0, scale, size=(n_rows, n_classes))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) < generator.random((n_rows, 1))).sum(axis=1)
    return logits, np.minimum(labels, n_classes - 1)

