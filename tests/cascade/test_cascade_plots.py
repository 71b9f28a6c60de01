"""The PNG plots, and the error that names the extra when matplotlib is missing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from cascade_cases import labelled_logits

from infergate.cascade.arrays import softmax
from infergate.cascade.plots import plot_accuracy_cost, plot_reliability_diagram
from infergate.cascade.tuning import tune_thresholds

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits, labels = labelled_logits(400, 3, seed=40)
    return softmax(logits * 3.0), softmax(logits), labels


def test_writes_a_reliability_diagram_and_an_accuracy_cost_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    before, after, labels = _inputs()
    path = plot_reliability_diagram(tmp_path / "reliability.png", labels, {"before": before, "after": after})
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    result = tune_thresholds([before, after], labels, [1.0, 4.0], 0.01)
    assert plot_accuracy_cost(tmp_path / "curve.png", result).read_bytes().startswith(PNG_SIGNATURE)


def test_without_matplotlib_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    before, _, labels = _inputs()
    with pytest.raises(ModuleNotFoundError) as info:
        plot_reliability_diagram(tmp_path / "reliability.png", labels, {"before": before})
    assert str(info.value) == ("drawing a reliability diagram needs matplotlib, which is not installed: "
                               "pip install 'infergate[bench]'")
    assert not (tmp_path / "reliability.png").exists()
