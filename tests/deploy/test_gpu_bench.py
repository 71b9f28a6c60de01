"""bench/gpu.sh without a GPU: it says so and exits 0; its dry run runs every step on the CPU in seconds."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT

GPU_SH = ROOT / "bench" / "gpu.sh"
DRY_RUN_TIMEOUT_S = 180  # about 20 s on the project's shared 2-core machine


def embedded_python() -> str:
    """The measurements' Python, as gpu.sh writes it out (its quoted here-document)."""
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", GPU_SH.read_text(), re.S)
    assert match is not None
    return match[1]


def run_gpu_sh(*args: str, path: str | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "PATH": path or os.environ["PATH"]}
    env.pop("BUDGET_S", None)
    return subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def test_the_script_parses_and_its_bound_is_under_8_minutes() -> None:
    assert subprocess.run(["bash", "-n", str(GPU_SH)], capture_output=True, timeout=30).returncode == 0
    ast.parse(embedded_python())
    text = GPU_SH.read_text()
    default_budget_s = int(re.search(r"budget_s=\$\{BUDGET_S:-(\d+)\}", text)[1])  # type: ignore[index]
    margin_s = int(re.search(r"hard_limit_s=\$\(\(budget_s \+ (\d+)\)\)", text)[1])  # type: ignore[index]
    kill_after_s = int(re.search(r"timeout --kill-after=(\d+)", text)[1])  # type: ignore[index]
    assert default_budget_s + margin_s + kill_after_s < 8 * 60


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    """An nvidia-smi that finds no GPU (as on a CPU node with the driver tools but no device) comes first."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    done = run_gpu_sh(str(out), path=f"{fake_bin}:{os.environ['PATH']}")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("gpu.sh: no NVIDIA GPU here (nvidia-smi finds none): nothing to measure; exiting 0")
    assert not out.exists()


def test_the_dry_run_measures_every_part_and_writes_both_tables(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    done = run_gpu_sh("--dry-run", str(out), timeout_s=DRY_RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((out / "gpu-bench.json").read_text())
    assert doc["host"]["mode"] == "dry-run" and doc["is_complete"] is True
    has_torch = importlib.util.find_spec("torch") is not None
    runtimes = {"onnxruntime", "torch"} if has_torch else {"onnxruntime"}
    assert doc["skipped"] == ([] if has_torch else ["torch rows and the TorchScript ResNet: torch is not installed"])
    cells = {(r["model"], r["runtime"], r["device"], r["batch"]) for r in doc["direct"]}
    assert cells == {(m, rt, "cpu", b) for m in ("mlp_small", "mlp_large", "resnet50") for rt in runtimes
                     for b in (1, 4)}
    assert all(r["rows_per_s"] > 0 for r in doc["direct"])
    if has_torch:  # one set of weights, two runtimes: the same answers
        assert {a["model"] for a in doc["agreement"]} == {"mlp_small", "mlp_large", "resnet50"}
        assert all(a["max_rel_diff"] < 1e-4 for a in doc["agreement"])
    (point,) = doc["served"]
    assert (point["model"], point["device"], point["batch"], point["errors"]) == ("mlp_small", "cpu", 1, {})
    assert point["rows_per_s"] > 0 and point["direct_rows_per_s"] > 0
    assert [(r["workers"], r["errors"]) for r in doc["frontend"]] == [(1, {}), (2, {})]
    assert all(r["rows_per_s"] > 0 and r["serving"].startswith("1/1 models; ") for r in doc["frontend"])
    report = (out / "gpu-bench.md").read_text()
    for heading in ("# bench/gpu.sh (dry-run)", "## Direct calls in one process", "### GPU against CPU, direct",
                    "## Through infergate serve", "## Front end: mlp_small batch 1"):
        assert heading in report
    assert done.stdout.rstrip().endswith(f"wrote {out / 'gpu-bench.md'} and {out / 'gpu-bench.json'}")


def test_a_budget_too_small_for_anything_fails_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "BUDGET_S": "10"}
    done = subprocess.run(["bash", str(GPU_SH), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 1
    assert "left after the checks and install; nothing measured" in done.stderr
