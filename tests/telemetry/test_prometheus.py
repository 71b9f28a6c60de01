"""Prometheus after real traffic: histograms, counters by status code and gauges parse with prometheus_client."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from infergate.server.telemetry.gpu import Gpus
from infergate.server.telemetry.histograms import LATENCY_BOUNDS_S

from harness import ServerProcess


def _input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _scrape(server: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


def _samples(families: dict[str, object], family: str, name: str, **labels: str) -> list[object]:
    return [s for s in families[family].samples  # type: ignore[attr-defined]
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_histograms_counters_and_gauges_after_traffic(server: ServerProcess,
                                                      client: grpcclient.InferenceServerClient) -> None:
    before = _scrape(server)
    ok_before = sum(s.value for s in _samples(before, "infergate_requests", "infergate_requests_total",
                                              model="classifier", code="OK"))
    for rows in (1, 2, 3, 4) * 5:
        client.infer("classifier", [_input(np.zeros((rows, 16), np.float32))])
    with pytest.raises(InferenceServerException):
        client.infer("classifier", [_input(np.zeros((1, 15), np.float32))])  # wrong shape
    families = _scrape(server)
    key = {"model": "classifier", "version": "1", "stage": ""}
    ok = _samples(families, "infergate_requests", "infergate_requests_total", model="classifier", code="OK")
    assert sum(s.value for s in ok) - ok_before == 20
    bad = _samples(families, "infergate_requests", "infergate_requests_total", model="classifier",
                   code="INVALID_ARGUMENT")
    assert bad and bad[0].value >= 1
    for family in ("infergate_request_duration_seconds", "infergate_queue_duration_seconds",
                   "infergate_compute_duration_seconds"):
        assert families[family].type == "histogram"  # type: ignore[attr-defined]
        buckets = _samples(families, family, family + "_bucket", **key)
        assert [b.labels["le"] for b in buckets] == [repr(b) if not float(b).is_integer() else f"{b:.1f}"
                                                     for b in LATENCY_BOUNDS_S] + ["+Inf"]
        counts = [b.value for b in buckets]
        assert counts == sorted(counts)  # cumulative
        (count,) = _samples(families, family, family + "_count", **key)
        assert count.value == counts[-1] >= 20
        (total,) = _samples(families, family, family + "_sum", **key)
        assert 0 < total.value < 60 * count.value
    (batch_count,) = _samples(families, "infergate_batch_size_rows", "infergate_batch_size_rows_count", **key)
    (batch_sum,) = _samples(families, "infergate_batch_size_rows", "infergate_batch_size_rows_sum", **key)
    assert batch_count.value >= 1 and batch_sum.value >= 50  # 5 x (1+2+3+4) rows at least
    for gauge in ("infergate_queue_depth", "infergate_in_flight_requests", "infergate_model_ready",
                  "infergate_price_usd_per_hour", "infergate_cost_per_1k_inferences_usd"):
        assert families[gauge].type == "gauge", gauge  # type: ignore[attr-defined]
    assert _samples(families, "infergate_in_flight_requests", "infergate_in_flight_requests", **key)[0].value == 0
    # The serving loop's tasks (what a soak watches for leaks): at least the transport's own, and bounded when idle.
    (tasks,) = families["infergate_event_loop_tasks"].samples  # type: ignore[attr-defined]
    assert 1 <= tasks.value < 100
    states = {(s.labels["model"], s.labels["state"]) for s in families["infergate_model_state"].samples}  # type: ignore[attr-defined]
    assert ("classifier", "READY") in states and ("broken_config", "UNAVAILABLE") in states
    (busy,) = _samples(families, "infergate_busy_seconds", "infergate_busy_seconds_total", **key)
    (cost,) = _samples(families, "infergate_cost_usd", "infergate_cost_usd_total", **key)
    (price,) = _samples(families, "infergate_price_usd_per_hour", "infergate_price_usd_per_hour", **key)
    assert busy.value > 0 and cost.value == pytest.approx(price.value * busy.value / 3600)
    # GPU gauges exist exactly when NVML reads a GPU on this machine: absent, not faked, without one.
    assert ("infergate_gpu_utilization_ratio" in families) == Gpus().available


def test_labels_never_take_request_content(server: ServerProcess, client: grpcclient.InferenceServerClient) -> None:
    for name in ("client-chosen-1", "client-chosen-2"):
        with pytest.raises(InferenceServerException):
            client.infer(name, [_input(np.zeros((1, 16), np.float32))], request_id=name)
    client.infer("classifier", [_input(np.zeros((1, 16), np.float32))], request_id="client-chosen-3")
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "client-chosen" not in text


def test_stats_json(server: ServerProcess, client: grpcclient.InferenceServerClient) -> None:
    client.infer("classifier", [_input(np.zeros((2, 16), np.float32))])
    with urllib.request.urlopen(f"http://{server.metrics_address}/stats.json", timeout=10) as response:
        snapshot = json.loads(response.read())
    (model,) = [m for m in snapshot["models"] if m["model"] == "classifier"]
    assert model["device"] == "cpu" and model["price_usd_per_hour"] > 0
    minute = model["windows"]["1m"]
    assert minute["requests"] >= 1 and minute["inferences"] >= 2
    assert minute["latency_ms"]["request"]["p50"] > 0
    assert set(minute["latency_ms"]["request"]) == {"p50", "p90", "p95", "p99", "p99.9"}
