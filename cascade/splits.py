"""Deterministic stratified splits of labelled rows: calibration, tuning and evaluation parts by seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from infergate.cascade.arrays import IndexArray, as_labels, is_number
from infergate.cascade.errors import CascadeError

FRACTION_SUM_TOLERANCE = 1e-9  # fractions must add up to 1 within this


def stratified_split(labels: npt.ArrayLike, fractions: Sequence[float], seed: int) -> tuple[IndexArray, ...]:
    """Row indices of each part, sorted, so that every class is cut in the given fractions.

    The same labels, fractions and seed always give the same parts. Each class's rows are shuffled by one
    generator seeded with `seed`, then cut where the cumulative fractions fall (rounded), so a class of
    few rows may leave a part without it.
    """
    y = as_labels("labels", labels)
    if len(fractions) < 2:
        raise CascadeError(f"fractions has {len(fractions)} value(s), expected at least 2 parts")
    for index, fraction in enumerate(fractions):
        if not (is_number(fraction) and 0.0 < fraction < 1.0):
            raise CascadeError(f"fractions[{index}] is {fraction!r}, expected a number in (0, 1)")
    if not math.isclose(sum(fractions), 1.0, rel_tol=0.0, abs_tol=FRACTION_SUM_TOLERANCE):
        raise CascadeError(f"fractions sum to {sum(fractions)!r}, expected 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CascadeError(f"seed is {seed!r}, expected an integer")
    generator = np.random.default_rng(seed)
    cumulative = np.cumsum(np.asarray(fractions[:-1], dtype=np.float64))
    parts: list[list[IndexArray]] = [[] for _ in fractions]
    for label in np.unique(y):  # sorted, so the generator's draws go to the classes in a fixed order
        rows = generator.permutation(np.flatnonzero(y == label))
        cuts = np.round(cumulative * len(rows)).astype(np.intp)
        for part, chunk in zip(parts, np.split(rows, cuts)):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(chunks)).astype(np.intp) for chunks in parts)
