"""Prometheus metrics on an HTTP port, read from the model statistics at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from infergate.server.registry import ModelRegistry

logger = logging.getLogger(__name__)


class RegistryCollector(Collector):
    """Exports ModelStatistics counters; the request path pays nothing for them."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["model", "version"]
        requests = CounterMetricFamily("infergate_requests", "Inference requests completed",
                                       labels=labels + ["outcome"])
        inferences = CounterMetricFamily("infergate_inferences", "Rows computed (batch rows)", labels=labels)
        executions = CounterMetricFamily("infergate_executions", "Batches executed", labels=labels)
        seconds = CounterMetricFamily("infergate_duration_seconds", "Time spent, summed over requests, by phase",
                                      labels=labels + ["phase"])
        queued = GaugeMetricFamily("infergate_queue_depth", "Requests waiting in the batcher queue", labels=labels)
        ready = GaugeMetricFamily("infergate_model_ready", "1 when the model version serves", labels=labels)
        for served in self.registry.all_served():
            key = [served.name, served.version]
            stats = served.stats
            requests.add_metric(key + ["success"], stats.success.count)
            requests.add_metric(key + ["failure"], stats.fail.count)
            inferences.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            for phase in ("queue", "compute_input", "compute_infer", "compute_output", "success"):
                seconds.add_metric(key + [phase if phase != "success" else "request"], getattr(stats, phase).ns / 1e9)
            queued.add_metric(key, served.batcher.queued)
            ready.add_metric(key, 1)
        yield from (requests, inferences, executions, seconds, queued, ready)


def start_metrics_server(host: str, port: int, registry: ModelRegistry) -> int:
    """Serves /metrics in a background thread; returns the bound port."""
    REGISTRY.register(RegistryCollector(registry))
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)
