"""The perf_analyzer agreement check: its verdict, and (slow, with perf_analyzer) one short run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from infergate.bench import peer_kit
from infergate.bench.loadgen.agreement import verdict
from infergate.server.cli import main

PERF_ANALYZER_DIR = peer_kit.default_bench_cache() / "perf_analyzer"  # where `bench agreement` looks by default


def test_verdict_needs_both_throughput_and_p50_within_ten_percent() -> None:
    assert verdict(2000.0, 8.0, 1850.0, 8.7) == {"throughput_ratio": 0.925, "p50_ratio": 1.087, "tolerance": 0.1,
                                                 "agrees": True}
    assert not verdict(2000.0, 8.0, 1850.0, 8.9)["agrees"]  # P50 11 % higher
    assert not verdict(2000.0, 8.0, 1790.0, 8.0)["agrees"]  # throughput 10.5 % lower
    assert verdict(None, 8.0, 1850.0, 8.0) == {"throughput_ratio": None, "p50_ratio": 1.0, "tolerance": 0.1,
                                               "agrees": False}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.skipif(not (PERF_ANALYZER_DIR / "perf_analyzer").exists(),
                    reason=f"needs perf_analyzer: {peer_kit.perf_analyzer_install_command(PERF_ANALYZER_DIR)}")
def test_agreement_runs_both_clients_on_one_infergate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (_port_free(8011) and _port_free(8012)):
        pytest.skip("ports 8011/8012 are taken (another benchmark is running)")
    rc = main(["bench", "agreement", "--rounds", "1", "--duration-s", "2", "--warmup-s", "0.5", "--measurement-ms",
               "1000", "--out", str(tmp_path), "--work", str(tmp_path / "work"), "--log-level", "warning"])
    capsys.readouterr()
    doc = json.loads((tmp_path / "agreement.json").read_text())
    assert rc in (0, 1)  # agreement itself is judged on a quiet machine (bench/results), not in a test
    assert doc["medians"]["perf_analyzer_infer_per_s"] > 0 and doc["medians"]["harness_infer_per_s"] > 0
    assert doc["throughput_ratio"] is not None and doc["agrees"] == (rc == 0)
    assert (tmp_path / "raw" / "infergate" / "mlp_small-c16.txt").exists()
    assert (tmp_path / "agreement.md").read_text().startswith("# Harness vs perf_analyzer: mlp_small")
