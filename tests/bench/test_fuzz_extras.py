"""The fuzz and attack commands without hypothesis (the bench extra): one line naming the extra, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN_WITHOUT_HYPOTHESIS = """
import runpy, sys
sys.modules["hypothesis"] = None
sys.argv = ["{module}", "--out", sys.argv[1]]
runpy.run_module("infergate.bench.{module}", run_name="__main__")
"""


@pytest.mark.parametrize("module", ["fuzz", "attacks"])
def test_without_hypothesis_one_line_and_nothing_written(module: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", RUN_WITHOUT_HYPOTHESIS.format(module=module), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"python -m infergate.bench.{module}: hypothesis is not installed; "
                                   "pip install 'infergate[bench]'")
    assert not out.exists()
