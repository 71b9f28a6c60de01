"""GPU telemetry: NVML readings through a stand-in pynvml, and nothing at all without it."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from infergate.server.telemetry.gpu import GpuReading, Gpus, gpu_index


def _fake_nvml(count: int, failing: frozenset[int] = frozenset()) -> types.ModuleType:
    nvml: Any = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"

    def utilization(handle: int) -> Any:
        if handle in failing:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(gpu=37, memory=5)

    nvml.nvmlDeviceGetUtilizationRates = utilization
    nvml.nvmlDeviceGetPowerUsage = lambda h: 215_500  # milliwatts
    return nvml  # type: ignore[no-any-return]


def test_readings_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2, failing=frozenset({1})))
    gpus = Gpus()
    assert gpus.available and gpus.name(0) == "NVIDIA H100 80GB HBM3" and gpus.name(5) == ""
    # GPU 1 fails to answer: left out, never a made-up value.
    assert gpus.read() == [GpuReading(0, "NVIDIA H100 80GB HBM3", 0.37, 215.5)]


def test_absent_without_nvml_or_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert not Gpus().available and Gpus().read() == []
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(0))  # installed, no GPU
    assert not Gpus().available


def test_gpu_index() -> None:
    assert gpu_index("cuda:1") == 1 and gpu_index("cuda") == 0 and gpu_index("cpu") is None
