"""The built wheel installs everything under `infergate/`: no bare `server` or `models` package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_the_infergate_namespace(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("infergate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"infergate", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for package in ("proto", "server", "batching", "models", "kernels", "cascade", "bench", "server/telemetry",
                    "bench/loadgen"):
        assert f"infergate/{package}/__init__.py" in names
    assert "infergate/proto/grpc_service.proto" in names
    assert not any(name.startswith("infergate/tests") for name in names)
