"""Drift: PSI against a hand-computed value, profiles, the monitor, and a live server with a shifted input."""

from __future__ import annotations

import math
import subprocess
import sys
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from infergate.server.telemetry import drift

from harness import start_server


def test_psi_against_hand_computed_value() -> None:
    expected = np.array([0.25, 0.25, 0.25, 0.25])
    actual = np.array([10, 20, 30, 40])
    # By hand: (0.1-0.25)ln(0.4) + (0.2-0.25)ln(0.8) + (0.3-0.25)ln(1.2) + (0.4-0.25)ln(1.6)
    #        = 0.137444 + 0.011157 + 0.009116 + 0.070501 = 0.228218
    hand = -0.15 * math.log(0.4) - 0.05 * math.log(0.8) + 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    assert hand == pytest.approx(0.228218, abs=1e-6)
    assert drift.psi(expected, actual) == pytest.approx(hand, rel=1e-12)
    assert drift.psi(expected, np.array([5, 5, 5, 5])) == 0.0


def test_psi_with_an_empty_bin_stays_finite() -> None:
    value = drift.psi(np.array([0.5, 0.5, 0.0]), np.array([0, 10, 10]))
    assert np.isfinite(value) and value > 1.0


def test_profile_roundtrip_and_no_drift_on_training_data(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(5000, 3))
    data[:, 2] = np.round(data[:, 2])  # a discrete feature: repeated quantile edges are merged
    profile = drift.build_profile(data, "INPUT0", bins=10)
    assert profile.expected.sum(axis=1) == pytest.approx(np.ones(3))
    loaded = drift.load_profile(drift.save_profile(profile, tmp_path))
    assert np.array_equal(loaded.edges, profile.edges) and loaded.expected == pytest.approx(profile.expected)
    monitor = drift.DriftMonitor("m", loaded, threshold=0.2)
    monitor.fold(deque([[{"INPUT0": data[:2500]}], [{"INPUT0": data[2500:]}]]))
    current = monitor.current()
    assert len(current) == 3 and all(v < 1e-9 for v in current.values())


def test_monitor_warns_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    profile = drift.build_profile(rng.normal(size=(5000, 2)), "INPUT0")
    monitor = drift.DriftMonitor("m", profile, threshold=0.2)
    shifted = rng.normal(size=(1000, 2))
    shifted[:, 1] += 1.5
    monitor.fold(deque([[{"INPUT0": shifted[:100]}]]))
    assert monitor.current() == {}  # below MIN_ROWS: no figure yet
    with caplog.at_level("WARNING"):
        monitor.fold(deque([[{"INPUT0": shifted[100:]}]]))
        monitor.fold(deque([[{"INPUT0": shifted}]]))
    psi = monitor.current()
    assert psi["0"] < 0.05 and psi["1"] > 0.5
    (message,) = caplog.messages
    assert message.startswith("model 'm' input 'INPUT0' feature 1 drifted: PSI ")


def test_bad_profiles_say_what_is_wrong(tmp_path: Path) -> None:
    assert drift.monitor_for("m", tmp_path, {"INPUT0": (16,)}, 0.2) == (None, "")
    (tmp_path / drift.PROFILE_FILE).write_text("{not json")
    monitor, why = drift.monitor_for("m", tmp_path, {"INPUT0": (16,)}, 0.2)
    assert monitor is None and why.startswith(f"{tmp_path / drift.PROFILE_FILE}: not a drift profile (")
    drift.save_profile(drift.build_profile(np.zeros((10, 3)), "INPUT0"), tmp_path)
    monitor, why = drift.monitor_for("m", tmp_path, {"INPUT0": (16,)}, 0.2)
    assert why.endswith("drift_profile.json: 3 features, but input 'INPUT0' has dims [16]")


def test_server_exports_psi_for_a_shifted_input(telemetry_repository: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    training = rng.normal(size=(4000, 16)).astype(np.float32)
    np.save(tmp_path / "train.npy", training)
    built = subprocess.run([sys.executable, "-m", "infergate.server", "drift-profile", "--model-dir",
                            str(telemetry_repository / "drifting"), "--data", str(tmp_path / "train.npy")],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert built.stdout.endswith("drift_profile.json: input 'INPUT0', 16 features, 4000 rows, up to 10 bins each\n")
    server = start_server("--model-repository", str(telemetry_repository), "--drift-every-batches", "1",
                          "--drift-psi-threshold", "0.3")
    try:
        live = rng.normal(size=(400, 16)).astype(np.float32)
        live[:, 5] += 2.0  # feature 5 moves two standard deviations
        with grpcclient.InferenceServerClient(server.address) as client:
            for chunk in np.split(live, 50):
                x = grpcclient.InferInput("INPUT0", list(chunk.shape), "FP32")
                x.set_data_from_numpy(chunk)
                client.infer("drifting", [x])
                client.infer("plain", [x])
        with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        server.stop()
    psi = {s.labels["feature"]: s.value for s in families["infergate_drift_psi"].samples
           if s.labels["model"] == "drifting"}
    assert len(psi) == 16, "".join(server.log)
    assert psi["5"] > 1.0 and max(v for k, v in psi.items() if k != "5") < 0.3
    log = "".join(server.log)
    assert log.count("model 'drifting' input 'INPUT0' feature 5 drifted: PSI") == 1
    assert "feature 4 drifted" not in log
    assert "no drift profile (drift_profile.json) for 'bad_price', 'plain', 'priced': PSI is off for them" in log
