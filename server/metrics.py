"""Prometheus metrics and /stats.json on an HTTP port, read from the models' telemetry at scrape time."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, make_wsgi_app
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from infergate.server.registry import ModelRegistry, ServedModel
from infergate.server.telemetry import histograms
from infergate.server.telemetry.aggregate import METRICS, ModelTelemetry
from infergate.server.telemetry.cascade_view import saving_ratio
from infergate.server.telemetry.cost import cost_per_inference_usd, cost_usd
from infergate.server.telemetry.hub import Telemetry

logger = logging.getLogger(__name__)

STATS_PATH = "/stats.json"  # the telemetry snapshot `infergate stats` reads
MetricFamily = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
LABELS = ["model", "version", "stage"]  # every per-model family; values come from the repository only
# GOAWAYs the native HTTP/2 transport sent, by reason (an error code, a budget, a timeout, "shutdown", "idle").
HTTP2_GOAWAYS = Counter("infergate_http2_goaways", "GOAWAY frames sent by the native HTTP/2 transport, by reason",
                        ["reason"])
_LATENCY_HELP = {
    "request": ("infergate_request_duration_seconds", "Successful requests, receipt to response sent"),
    "queue": ("infergate_queue_duration_seconds", "Time a request waited in the batcher queue"),
    "compute": ("infergate_compute_duration_seconds", "Runtime time of the batch a request ran in"),
}


class RegistryCollector(Collector):
    """Exports counters, gauges and histograms; the request path only appended raw samples."""

    def __init__(self, registry: ModelRegistry, telemetry: Telemetry,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.registry = registry
        self.telemetry = telemetry
        self.loop = loop  # the serving loop, whose task count a soak watches for leaks

    def collect(self) -> Iterator[MetricFamily]:
        yield from self._counters()
        yield from self._telemetry()
        if self.loop is not None:
            tasks = GaugeMetricFamily("infergate_event_loop_tasks", "Asyncio tasks alive on the serving event "
                                      "loop (calls, connections, background work): flat at steady load")
            # all_tasks copies the loop's weak set, retrying if the loop changes it meanwhile: safe from this thread.
            tasks.add_metric([], len(asyncio.all_tasks(self.loop)))
            yield tasks

    def _counters(self) -> Iterator[MetricFamily]:
        labels = LABELS
        requests = CounterMetricFamily("infergate_requests", "Inference requests finished, by gRPC status code",
                                       labels=labels + ["code"])
        inferences = CounterMetricFamily("infergate_inferences", "Rows computed (batch rows)", labels=labels)
        executions = CounterMetricFamily("infergate_executions", "Batches executed", labels=labels)
        seconds = CounterMetricFamily("infergate_duration_seconds", "Time spent, summed over requests, by phase",
                                      labels=labels + ["phase"])
        busy = CounterMetricFamily("infergate_busy_seconds", "Device time of the model's batches "
                                   "(compute and feature transforms): what cost is charged on", labels=labels)
        queued = GaugeMetricFamily("infergate_queue_depth", "Requests waiting in the batcher queue", labels=labels)
        in_flight = GaugeMetricFamily("infergate_in_flight_requests", "Requests received and not yet answered",
                                      labels=labels)
        ready = GaugeMetricFamily("infergate_model_ready", "1 when the model version serves", labels=labels)
        unanswered = CounterMetricFamily("infergate_computed_unanswered_rows", "Rows computed for requests "
                                         "already cancelled or past their deadline when the outputs came",
                                         labels=labels)
        replaced = CounterMetricFamily("infergate_instance_replacements", "Instances replaced after an execution "
                                       "ran past --model-execution-timeout-s", labels=labels)
        hung = GaugeMetricFamily("infergate_hung_executions", "Executions past their timeout still running "
                                 "(a runtime that cannot be interrupted keeps its thread until they end)",
                                 labels=labels)
        state = GaugeMetricFamily("infergate_model_state", "1 for the model's current state "
                                  "(READY, UNAVAILABLE, LOADING, UNLOADING)", labels=["model", "state"])
        for served in self.registry.all_served():
            key = [served.name, served.version, ""]
            stats = served.stats
            requests.add_metric(key + ["OK"], stats.success.count)
            for code, count in sorted(stats.failures.items()):
                requests.add_metric(key + [code], count)
            inferences.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            # "transform" (feature transforms) is also inside compute_input, as Triton's phases go.
            for phase in ("queue", "compute_input", "transform", "compute_infer", "compute_output", "success"):
                seconds.add_metric(key + [phase if phase != "success" else "request"], getattr(stats, phase).ns / 1e9)
            busy.add_metric(key, stats.busy_ns / 1e9)
            if isinstance(served, ServedModel):  # a cascade has no queue of its own: its stages' are theirs
                queued.add_metric(key, served.queued)
                unanswered.add_metric(key, stats.computed_unanswered_rows)
                replaced.add_metric(key, served.batcher.replaced_instances)
                hung.add_metric(key, served.batcher.hung_executions)
            in_flight.add_metric(key, stats.in_flight)
            ready.add_metric(key, 1)
        for entry in self.registry.entries():
            state.add_metric([entry.name, entry.state], 1)
        yield from (requests, inferences, executions, seconds, busy, queued, in_flight, ready, state, unanswered,
                    replaced, hung)

    def _telemetry(self) -> Iterator[MetricFamily]:
        models = self.telemetry.attach_all()
        if not models:
            return
        latency = {m: HistogramMetricFamily(*_LATENCY_HELP[m], labels=LABELS) for m in METRICS}
        batch = HistogramMetricFamily("infergate_batch_size_rows", "Rows per executed batch", labels=LABELS)
        price = GaugeMetricFamily("infergate_price_usd_per_hour", "What the model's device costs per hour",
                                  labels=LABELS + ["device"])
        cost = CounterMetricFamily("infergate_cost_usd", "Price x busy seconds, since start", labels=LABELS)
        per_1k = GaugeMetricFamily("infergate_cost_per_1k_inferences_usd",
                                   "Cost of 1000 inferences since start (price x busy seconds / inferences)",
                                   labels=LABELS)
        drift = GaugeMetricFamily("infergate_drift_psi", "Population stability index of an input feature over "
                                  "the last 5 minutes against the model's drift profile",
                                  labels=LABELS + ["input", "feature"])
        saving = GaugeMetricFamily("infergate_cascade_saving_ratio", "1 - a cascade's cost per inference / its "
                                   "last stage's cost per row, since start", labels=LABELS)
        stage_rows = CounterMetricFamily("infergate_cascade_stage_rows", "Rows of a cascade's requests that "
                                         "reached each stage (the next stage's count is this one's escalations)",
                                         labels=LABELS)
        costs = _cascade_costs(models, self.telemetry.alone_per_row_usd)
        for telemetry in models:
            exported = telemetry.export()
            labels = telemetry.labels
            key = [labels.model, labels.version, labels.stage]
            if exported.drift_psi is not None and telemetry.drift is not None:
                for feature, value in exported.drift_psi.items():
                    drift.add_metric(key + [telemetry.drift.profile.input, feature], value)
            for i, metric in enumerate(METRICS):
                buckets = histograms.cumulative_buckets(exported.latency_buckets[i], histograms.LATENCY_BOUNDS_S)
                latency[metric].add_metric(key, buckets, exported.latency_sum_ns[i] / 1e9)
            batch.add_metric(key, histograms.cumulative_buckets(exported.batch_buckets, histograms.BATCH_BOUNDS_ROWS),
                             float(exported.batch_sum_rows))
            usd_per_hour, stats = telemetry.price.usd_per_hour, telemetry.stats
            price.add_metric(key + [labels.device], usd_per_hour)
            spent_usd = cost_usd(usd_per_hour, stats.busy_ns)
            per_inference = cost_per_inference_usd(usd_per_hour, stats.busy_ns, stats.inference_count)
            if labels.stage:
                stage_rows.add_metric(key, stats.inference_count)
            cascade = costs.get((labels.model, labels.version)) if not labels.stage else None
            if cascade is not None:
                spent_usd, last_per_row_usd = cascade
                per_inference = spent_usd / stats.inference_count if stats.inference_count else None
                ratio = saving_ratio(per_inference, last_per_row_usd)
                if ratio is not None:
                    saving.add_metric(key, ratio)
            cost.add_metric(key, spent_usd)
            if per_inference is not None:
                per_1k.add_metric(key, per_inference * 1000)
        yield from latency.values()
        yield from (batch, price, cost, per_1k, drift, saving, stage_rows)
        yield from self._gpus()

    def _gpus(self) -> Iterator[MetricFamily]:
        if self.telemetry.gpus is None or not self.telemetry.gpus.available:
            return  # absent, never faked
        utilization = GaugeMetricFamily("infergate_gpu_utilization_ratio", "NVML GPU utilisation, 0..1",
                                        labels=["gpu", "name"])
        power = GaugeMetricFamily("infergate_gpu_power_watts", "NVML power draw", labels=["gpu", "name"])
        for reading in self.telemetry.gpus.read():
            utilization.add_metric([str(reading.index), reading.name], reading.utilization_ratio)
            power.add_metric([str(reading.index), reading.name], reading.power_watts)
        yield from (utilization, power)


def _cascade_costs(models: list[ModelTelemetry], alone_per_row_usd: dict[tuple[str, str], float]
                   ) -> dict[tuple[str, str], tuple[float, float | None]]:
    """Per cascade (model, version): what its stages cost since start, and the saving's reference: a row sent
    to its last stage alone (at its best batched cost when known, else at that stage's cost here)."""
    costs: dict[tuple[str, str], tuple[float, float | None]] = {}
    for telemetry in models:
        labels, stats = telemetry.labels, telemetry.stats
        if labels.stage:
            key = (labels.model, labels.version)
            spent, _ = costs.get(key, (0.0, None))
            last = cost_per_inference_usd(telemetry.price.usd_per_hour, stats.busy_ns, stats.inference_count)
            costs[key] = (spent + cost_usd(telemetry.price.usd_per_hour, stats.busy_ns),
                          alone_per_row_usd.get(key, last))  # rows come in stage order: the last one stays
    return costs


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not worth a log line each."""


def make_app(telemetry: Telemetry) -> Callable[..., Iterable[bytes]]:
    """/stats.json from the telemetry; everything else is prometheus_client's /metrics."""
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = json.dumps(telemetry.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    return app


def start_metrics_server(host: str, port: int, registry: ModelRegistry, telemetry: Telemetry) -> int:
    """Serves /metrics and /stats.json in a background thread; returns the bound port. Called on the serving loop."""
    REGISTRY.register(RegistryCollector(registry, telemetry, asyncio.get_running_loop()))
    server = make_server(host, port, make_app(telemetry), ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return int(server.server_port)
