"""Cost per inference: what a model's device costs per hour, and the arithmetic on busy time."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# One vCPU of an on-demand general-purpose cloud instance, USD per hour: AWS c7i.large
# (2 vCPU) in us-east-1 lists at 0.0893/h. A default to make the figures meaningful out of the box;
# set --cpu-core-price-usd-per-hour to what a core costs you.
DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR = 0.0446
# Rough on-demand cloud prices per GPU, USD per hour, matched against NVML's device name; set
# --gpu-price-usd-per-hour (or the model's price_usd_per_hour parameter) to your real price.
GPU_PRICES_USD_PER_HOUR = {"H200": 5.0, "H100": 4.0, "A100": 2.5, "L40S": 1.9, "A10G": 1.0, "L4": 0.8, "T4": 0.5}
DEFAULT_GPU_PRICE_USD_PER_HOUR = 2.0  # a GPU whose name matches none of the above
PRICE_PARAMETER = "price_usd_per_hour"  # config.pbtxt parameter: one instance's device price


@dataclass(frozen=True, slots=True)
class Price:
    """What one model's device costs, and where the figure came from (shown by `infergate stats`)."""

    usd_per_hour: float
    source: str  # "cpu 1 core x 0.0446", "gpu H100", "config parameter", ...


def parse_price(text: str, what: str) -> float:
    """A price in USD per hour: a finite number >= 0; raises ValueError naming `what` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} is '{text}', expected a number of USD per hour such as 0.05") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{what} is '{text}', expected a finite price >= 0 USD per hour")
    return value


def cpu_cores(parameters: dict[str, str]) -> int:
    """Cores one CPU instance keeps busy: ONNX Runtime's intra_op_thread_count (0: all cores)."""
    try:
        threads = int(parameters.get("intra_op_thread_count", "1") or 1)
    except ValueError:
        threads = 1
    return threads if threads > 0 else (os.cpu_count() or 1)


def device_price(device: str, cores: int, cpu_core_usd_per_hour: float, gpu_usd_per_hour: float | None,
                 gpu_name: str = "") -> Price:
    """The default price of one instance on `device` ("cpu" or "cuda:N"), before per-model overrides."""
    if device == "cpu":
        return Price(cores * cpu_core_usd_per_hour, f"cpu {cores} core(s) x {cpu_core_usd_per_hour:g}")
    if gpu_usd_per_hour is not None:
        return Price(gpu_usd_per_hour, "--gpu-price-usd-per-hour")
    for name, price in GPU_PRICES_USD_PER_HOUR.items():
        if name in gpu_name.upper():
            return Price(price, f"gpu {name} default")
    return Price(DEFAULT_GPU_PRICE_USD_PER_HOUR, f"gpu default ({gpu_name or 'unknown'})")


def model_price(model: str, parameters: dict[str, str], default: Price) -> Price:
    """The model's price_usd_per_hour parameter when set and valid; a bad one is logged, default kept."""
    text = parameters.get(PRICE_PARAMETER)
    if text is None:
        return default
    try:
        return Price(parse_price(text, f"model '{model}' parameter {PRICE_PARAMETER}"), "config parameter")
    except ValueError as exc:
        logger.warning("%s; costing it at the default %.4f USD/h (%s)", exc, default.usd_per_hour, default.source)
        return default


def cost_usd(usd_per_hour: float, busy_ns: int) -> float:
    """What `busy_ns` of the device costs."""
    return usd_per_hour * busy_ns / 3.6e12


def cost_per_inference_usd(usd_per_hour: float, busy_ns: int, inferences: int) -> float | None:
    """Price x busy seconds / inferences served; None before the first inference."""
    return cost_usd(usd_per_hour, busy_ns) / inferences if inferences else None

