"""Device check: NVML readings through infergate's gpu.py and the GPU price it resolves (stdlib + pynvml only)."""

import importlib.util
import logging
import sys
import time
from types import ModuleType


def load(name: str, path: str) -> ModuleType:
    """Loads one infergate module by path: the lent machine has no infergate install."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


logging.basicConfig(level=logging.DEBUG)
gpu = load("gpu", "server/telemetry/gpu.py")
cost = load("cost", "server/telemetry/cost.py")
gpus = gpu.Gpus()
print("available:", gpus.available)
print("name(0):", repr(gpus.name(0)))
for _ in range(3):
    print("reading:", gpus.read())
    time.sleep(0.2)
print("gpu_index:", gpu.gpu_index("cuda:0"), gpu.gpu_index("cpu"))
print("price:", cost.device_price("cuda:0", 1, 0.0446, None, gpus.name(0)))
