"""Cost per inference: arithmetic on known busy time, price resolution, and bad prices that do not stop serving."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from infergate.server.telemetry import cost
from infergate.server.telemetry.cost import Price

from harness import start_server


def test_cost_arithmetic_on_known_busy_time() -> None:
    # 2 USD/h for 90 s busy = 0.05 USD; over 10_000 inferences = 5e-6 USD each.
    assert cost.cost_usd(2.0, 90 * 10**9) == pytest.approx(0.05, rel=1e-12)
    assert cost.cost_per_inference_usd(2.0, 90 * 10**9, 10_000) == pytest.approx(5e-6, rel=1e-12)
    assert cost.cost_per_inference_usd(2.0, 0, 0) is None


def test_device_price_defaults() -> None:
    assert cost.device_price("cpu", 2, 0.05, None) == Price(0.1, "cpu 2 core(s) x 0.05")
    assert cost.device_price("cuda:0", 1, 0.05, None, "NVIDIA H100 80GB HBM3").usd_per_hour == 4.0
    assert cost.device_price("cuda:0", 1, 0.05, 3.3, "NVIDIA H100").usd_per_hour == 3.3
    assert cost.device_price("cuda:1", 1, 0.05, None, "Mystery GPU").usd_per_hour == cost.DEFAULT_GPU_PRICE_USD_PER_HOUR
    assert cost.cpu_cores({"intra_op_thread_count": "4"}) == 4
    assert cost.cpu_cores({}) == 1


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", ""])
def test_bad_price_is_refused_with_its_value(text: str) -> None:
    with pytest.raises(ValueError, match=f"--x is '{text}', expected"):
        cost.parse_price(text, "--x")


def test_bad_model_price_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    default = Price(0.05, "cpu")
    with caplog.at_level(logging.WARNING):
        assert cost.model_price("m", {"price_usd_per_hour": "lots"}, default) == default
    assert caplog.messages == [
        "model 'm' parameter price_usd_per_hour is 'lots', expected a number of USD per hour such as 0.05; "
        "costing it at the default 0.0500 USD/h (cpu)"]
    assert cost.model_price("m", {"price_usd_per_hour": "1.5"}, default) == Price(1.5, "config parameter")


def test_a_bad_price_flag_stops_the_server_before_it_loads(telemetry_repository: Path) -> None:
    with pytest.raises(RuntimeError) as raised:
        start_server("--model-repository", str(telemetry_repository), "--gpu-price-usd-per-hour", "cheap")
    message = str(raised.value)
    assert "server exited with 2" in message
    assert "--gpu-price-usd-per-hour is 'cheap', expected a number of USD per hour" in message
    assert "loaded model" not in message


def test_server_prices_per_model_and_serves_despite_a_bad_model_price(telemetry_repository: Path) -> None:
    server = start_server("--model-repository", str(telemetry_repository), "--cpu-core-price-usd-per-hour", "0.5")
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            x = grpcclient.InferInput("INPUT0", [4, 16], "FP32")
            x.set_data_from_numpy(np.ones((4, 16), np.float32))
            for name in ("priced", "bad_price", "plain"):
                for _ in range(5):
                    client.infer(name, [x])
        with urllib.request.urlopen(f"http://{server.metrics_address}/stats.json", timeout=10) as response:
            models = {m["model"]: m for m in json.loads(response.read())["models"]}
    finally:
        server.stop()
    assert (models["priced"]["price_usd_per_hour"], models["priced"]["price_source"]) == (7.2, "config parameter")
    assert models["bad_price"]["price_usd_per_hour"] == 0.5 and models["plain"]["price_usd_per_hour"] == 0.5
    everything = models["priced"]["windows"]["all"]
    assert everything["inferences"] == 20
    # Cost per 1k inferences is exactly price x busy seconds / inferences x 1000.
    assert everything["cost_per_1k_inferences_usd"] == pytest.approx(7.2 / 3600 * everything["busy_s"] / 20 * 1000)
    log = "".join(server.log)
    assert log.count("model 'bad_price' parameter price_usd_per_hour is 'lots'") == 1
