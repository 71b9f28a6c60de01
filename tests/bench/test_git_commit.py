"""Bench results name the commit they came from: a checkout's HEAD, else the installed version."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infergate.bench.perf_compare import REPO_ROOT, git_commit


def test_a_checkout_names_its_head() -> None:
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not run from a git checkout")
    assert git_commit(REPO_ROOT) == head.stdout.strip()


def test_a_worktree_names_its_head(tmp_path: Path) -> None:
    # A worktree's .git is a file, which reading .git/HEAD by hand took for no checkout at all.
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD~1"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not run from a git checkout with history")
    worktree = tmp_path / "tree"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(worktree), "HEAD~1"],
                   check=True, capture_output=True)
    try:
        assert (worktree / ".git").is_file()
        assert git_commit(worktree) == head.stdout.strip()
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)],
                       capture_output=True)


def test_outside_any_checkout_it_names_the_installed_version(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # some other project's repository
    monkeypatch.chdir(tmp_path)
    assert git_commit(tmp_path).startswith("infergate ")
    assert git_commit(tmp_path).endswith("(installed, not a checkout)")
