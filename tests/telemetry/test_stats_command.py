"""`infergate stats` against a running server, and the table as a pure function."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from infergate.server.telemetry.table import COLUMNS, stats_table

from harness import ServerProcess, start_server


def test_stats_command_prints_a_row_per_model(server: ServerProcess, client: grpcclient.InferenceServerClient) -> None:
    x = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    x.set_data_from_numpy(np.zeros((2, 16), np.float32))
    for _ in range(10):
        client.infer("classifier", [x])
    result = subprocess.run([sys.executable, "-m", "infergate.server", "stats", "--address",
                             str(server.metrics_address)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("window 1m; uptime ")
    assert lines[1].split() == [w for c in COLUMNS for w in c.split()]
    (row,) = [line.split() for line in lines if line.startswith("classifier ")]
    assert row[:4] == ["classifier", "1", "-", "cpu"]
    assert float(row[4]) > 0 and float(row[5]) > 0 and float(row[-2]) > 0  # rate, p50, cost per 1k


def test_stats_command_says_when_no_server() -> None:
    result = subprocess.run([sys.executable, "-m", "infergate.server", "stats", "--address", "127.0.0.1:9"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "infergate stats: cannot read http://127.0.0.1:9/stats.json" in result.stderr


def test_table_shows_dashes_before_traffic() -> None:
    empty = {"request": dict.fromkeys(("p50", "p90", "p95", "p99", "p99.9"))}
    latency = {"request": empty["request"], "queue": empty["request"], "compute": empty["request"]}
    window = {"seconds": 3.0, "requests": 0, "requests_per_s": 0.0, "inferences": 0, "batches": 0,
              "mean_batch_rows": None, "busy_s": 0.0, "cost_usd": 0.0, "cost_per_1k_inferences_usd": None,
              "latency_ms": latency}
    snapshot = {"uptime_s": 3.2, "telemetry": True, "gpus": [], "models": [
        {"model": "m", "version": "1", "stage": "", "device": "cpu", "windows": {"1m": window}}]}
    lines = stats_table(snapshot, "1m").splitlines()
    assert lines[2].split() == ["m", "1", "-", "cpu", "0.0", "-", "-", "-", "-", "-", "-", "0.0", "-", "-"]


def test_telemetry_off_keeps_counters_only(telemetry_repository: Path) -> None:
    server = start_server("--model-repository", str(telemetry_repository), "--telemetry", "off")
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            x = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            x.set_data_from_numpy(np.zeros((1, 16), np.float32))
            client.infer("plain", [x])
            stats = client.get_inference_statistics("plain").model_stats[0]
        assert stats.inference_count == 1 and stats.inference_stats.success.count == 1
        with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
            text = response.read().decode()
        with urllib.request.urlopen(f"http://{server.metrics_address}/stats.json", timeout=10) as response:
            snapshot = json.loads(response.read())
    finally:
        server.stop()
    assert 'infergate_requests_total{code="OK",model="plain",stage="",version="1"} 1.0' in text
    assert "infergate_request_duration_seconds" not in text
    assert snapshot["telemetry"] is False and snapshot["models"] == []
    assert stats_table(snapshot, "1m").splitlines()[0].endswith("telemetry is off on this server (--telemetry off)")
