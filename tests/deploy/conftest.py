"""Fixtures of the deploy tests: the check module, and a copy of the files it reads that a test may break."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest
from deploy_support import ROOT, load_check

# What deploy/check.py reads: a test's copy holds these, so a broken one never touches the checkout.
CHECKED_FILES = ("Dockerfile", "Dockerfile.gpu", ".ci/run", "setup.py")
CHECKED_FOLDERS = ("deploy",)


@pytest.fixture(scope="session")
def check() -> ModuleType:
    return load_check()


@pytest.fixture()
def copied(tmp_path: Path, check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the checked files; the check module reads the copy for the rest of the test."""
    for name in CHECKED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    for name in CHECKED_FOLDERS:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(check, "REPO", tmp_path)
    monkeypatch.setattr(check, "CI_RUN", tmp_path / ".ci" / "run")
    monkeypatch.setattr(check, "SETUP", tmp_path / "setup.py")
    monkeypatch.setattr(check, "KUBERNETES_DIR", tmp_path / "deploy" / "kubernetes")
    monkeypatch.setattr(check, "KSERVE_DIR", tmp_path / "deploy" / "kserve")
    monkeypatch.setattr(check, "KSERVE_SCHEMA_DIR", tmp_path / "deploy" / "kserve" / "schema")
    return tmp_path
