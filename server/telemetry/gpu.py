"""GPU utilisation and power from NVML, when nvidia-ml-py imports and a GPU is present; else nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    name: str
    utilization_ratio: float  # share of the last sample period a kernel ran, 0..1 (NVML's gpu utilisation)
    power_watts: float


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class Gpus:
    """NVML handles, opened once; `available` is False (and readings empty) without NVML or a GPU."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._names: list[str] = []  # a GPU's name does not change: read once, not on every scrape
        try:
            import pynvml  # the `gpu` extra: nvidia-ml-py
        except ImportError:
            logger.debug("nvidia-ml-py not installed: no GPU telemetry")
            return
        try:
            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._names = [_text(pynvml.nvmlDeviceGetName(handle)) for handle in self._handles]
        except Exception as exc:  # NVMLError: no driver, no GPU
            logger.info("NVML present but no GPU readable (%s): no GPU telemetry", exc)
            return
        self._nvml = pynvml

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def name(self, index: int) -> str:
        return self._names[index] if 0 <= index < len(self._names) else ""

    def read(self) -> list[GpuReading]:
        """One reading per GPU; a GPU that fails to answer is left out (never a made-up value)."""
        readings = []
        for index, handle in enumerate(self._handles):
            try:
                utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
                power_watts = self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception as exc:
                logger.debug("NVML reading of GPU %d failed: %s", index, exc)
                continue
            readings.append(GpuReading(index, self.name(index), utilization, power_watts))
        return readings


def gpu_index(device: str) -> int | None:
    """The GPU index of a runtime device ("cuda:1" -> 1); None for the CPU."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0
