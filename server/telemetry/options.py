"""Telemetry settings, as the command line and ServerOptions carry them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from infergate.server.telemetry.cost import DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR

logger = logging.getLogger(__name__)

DEFAULT_TRACE_SAMPLING_RATIO = 0.01  # share of requests without a client trace that are traced
DEFAULT_DRIFT_EVERY_BATCHES = 16  # the drift monitor looks at one batch in this many
DEFAULT_DRIFT_PSI_THRESHOLD = 0.2  # PSI above this logs a warning (0.1-0.25: moderate shift; above: major)


@dataclass(slots=True)
class TelemetryOptions:
    """What telemetry records and exports; the defaults cost a few percent of throughput at most."""

    is_enabled: bool = True  # False: ModelStatistics counters only (no sketches, histograms, cost, drift)
    cpu_core_price_usd_per_hour: float = DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR
    gpu_price_usd_per_hour: float | None = None  # None: a default per GPU model (cost.GPU_PRICES_USD_PER_HOUR)
    trace_exporter: str = "none"  # "none" (tracing off), "console", "otlp"
    trace_sampling_ratio: float = DEFAULT_TRACE_SAMPLING_RATIO
    otlp_endpoint: str | None = None  # None: the exporter's default (OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317)
    span_exporter: Any = None  # tests: an opentelemetry SpanExporter used instead of trace_exporter
    drift_every_batches: int = DEFAULT_DRIFT_EVERY_BATCHES
    drift_psi_threshold: float = DEFAULT_DRIFT_PSI_THRESHOLD
