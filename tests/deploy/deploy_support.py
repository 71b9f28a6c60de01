"""Helpers of the deploy tests: deploy/check.py as a module, editing a copied file, skipping on a missing tool."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK_PATH = ROOT / "deploy" / "check.py"


def load_check() -> ModuleType:
    """deploy/check.py by path: deploy/ is no package (it is not installed, and the image copies one file)."""
    spec = importlib.util.spec_from_file_location("infergate_deploy_check", CHECK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def edit(path: Path, old: str, new: str) -> None:
    """Replaces old, which must be there, by new."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def tool_or_skip(check: ModuleType, run: Callable[[], list[str]]) -> list[str]:
    """run()'s errors, or a skip naming the missing tool (.ci/lint_deploy installs them and runs them all)."""
    try:
        return run()
    except check.ToolMissing as missing:
        pytest.skip(f"{missing} (.ci/lint_deploy installs it)")
