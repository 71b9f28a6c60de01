"""Triton's own perf_analyzer runs unchanged against infergate and prints server-side statistics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from harness import ServerProcess

PERF_ANALYZER = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")


@pytest.mark.slow
@pytest.mark.skipif(not PERF_ANALYZER, reason="perf_analyzer not installed (set PERF_ANALYZER; see README)")
def test_perf_analyzer_runs_against_infergate(server: ServerProcess) -> None:
    assert PERF_ANALYZER is not None
    result = subprocess.run(
        [PERF_ANALYZER, "-i", "grpc", "-u", server.address, "-m", "classifier", "--concurrency-range", "1:8:4",
         "-p", "500", "--max-trials", "4", "-s", "100"],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("Request concurrency:") == 2
    assert "Server: " in out and re.search(r"Inference count: [1-9]\d*", out)
    assert re.search(r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec \+ compute input", out)
    throughputs = [float(x) for x in re.findall(r"Throughput: ([\d.]+) infer/sec", out)]
    assert throughputs and min(throughputs) > 0
