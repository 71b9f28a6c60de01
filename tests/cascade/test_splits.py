"""Stratified splits: deterministic by seed, a partition of the rows, each class cut in the fractions."""

from __future__ import annotations

import numpy as np
import pytest

from infergate.cascade.errors import CascadeError
from infergate.cascade.splits import stratified_split

LABELS = np.repeat([0, 1, 2], [500, 300, 200])


def test_parts_partition_the_rows_and_cut_every_class() -> None:
    parts = stratified_split(LABELS, [0.5, 0.3, 0.2], seed=7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    for part, fraction in zip(parts, [0.5, 0.3, 0.2]):
        assert part.tolist() == sorted(part.tolist())
        for label, count in [(0, 500), (1, 300), (2, 200)]:
            assert (LABELS[part] == label).sum() == round(count * fraction)


def test_the_same_seed_gives_the_same_split_and_another_does_not() -> None:
    first = stratified_split(LABELS, [0.6, 0.4], seed=1)
    assert all(a.tolist() == b.tolist() for a, b in zip(first, stratified_split(LABELS, [0.6, 0.4], seed=1)))
    assert first[0].tolist() != stratified_split(LABELS, [0.6, 0.4], seed=2)[0].tolist()


@pytest.mark.parametrize(("fractions", "message"), [
    ([1.0], "fractions has 1 value(s), expected at least 2 parts"),
    ([0.5, 0.0, 0.5], "fractions[1] is 0.0, expected a number in (0, 1)"),
    ([0.5, 0.6], "fractions sum to 1.1, expected 1"),
])
def test_bad_fractions(fractions: list[float], message: str) -> None:
    with pytest.raises(CascadeError) as info:
        stratified_split(LABELS, fractions, seed=0)
    assert str(info.value) == message


def test_bad_labels_and_seed() -> None:
    with pytest.raises(CascadeError, match=r"^labels has -1 at row 1, expected class indices >= 0$"):
        stratified_split([0, -1], [0.5, 0.5], seed=0)
    with pytest.raises(CascadeError, match=r"^seed is 1\.5, expected an integer$"):
        stratified_split([0, 1], [0.5, 0.5], seed=1.5)  # type: ignore[arg-type]
