"""`infergate bench` against a real infergate: counts, rates, queueing, correctness, bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infergate.server.cli import main

from harness import ServerProcess


def _bench(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    rc = main(["bench", *args, "--out", str(out), "--no-plots", "--quiet", "--log-level", "warning"])
    err = capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    return rc, doc, err


def test_closed_loop_completes_the_requested_count(bench_server: ServerProcess, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "classifier",
                        "--concurrency", "4", "--requests", "300", "--warmup-s", "0.5", "--duration-s", "60",
                        "--check-every", "10", "--processes", "2")
    assert rc == 0
    (point,) = doc["points"]
    assert (point["ok"], point["errors"], point["processes"]) == (300, {}, 2)
    assert point["checked"] >= 20 and point["latency_ms"]["p50"] > 0 and point["throughput_per_s"] > 0
    assert doc["targets"][bench_server.address]["expected_outputs"].startswith("each request answered alone")
    assert doc["metadata"]["cpu_count"] and doc["metadata"]["versions"]["grpcio"]


def test_open_loop_completes_the_requested_count(bench_server: ServerProcess, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "classifier",
                        "--rate", "200", "--requests", "300", "--warmup-s", "0.5")
    assert rc == 0
    (point,) = doc["points"]
    assert (point["ok"], point["errors"], point["window_s"]) == (300, {}, 1.5)


def test_measured_rate_matches_the_requested_poisson_rate(bench_server: ServerProcess, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # 250/s is a tenth of what one client process sends here: the client is far from its limit.
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "classifier",
                        "--rate", "250", "--duration-s", "4", "--warmup-s", "1")
    assert rc == 0
    (point,) = doc["points"]
    assert point["sent_per_s"] == pytest.approx(250, rel=0.05)
    assert point["throughput_per_s"] == pytest.approx(250, rel=0.05)
    assert not point["client_limited"]


def test_open_loop_shows_the_queueing_a_closed_loop_hides(bench_server: ServerProcess, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`slow` serves one request at a time (S ~ 10-15 ms). A closed loop at c=1 never queues: it sees S at the
    model's full throughput 1/S. Poisson arrivals at 75% of that throughput queue behind each other (M/D/1 at
    rho 0.75: mean wait 1.5 S, the tail several S), which only latency from the scheduled send time shows."""
    rc, closed_doc, _ = _bench(capsys, tmp_path / "closed", "--target", bench_server.address, "--model", "slow",
                               "--concurrency", "1", "--duration-s", "3", "--warmup-s", "0.5")
    assert rc == 0
    (closed,) = closed_doc["points"]
    rate = round(0.75 * closed["throughput_per_s"], 1)
    rc, open_doc, _ = _bench(capsys, tmp_path / "open", "--target", bench_server.address, "--model", "slow",
                             "--rate", str(rate), "--duration-s", "8", "--warmup-s", "0.5")
    assert rc == 0
    (opened,) = open_doc["points"]
    assert opened["throughput_per_s"] <= closed["throughput_per_s"] * 1.05  # no more work done than the closed loop
    assert opened["mean_ms"] > 1.3 * closed["mean_ms"]
    assert opened["latency_ms"]["p99"] > 2 * closed["latency_ms"]["p99"]


def test_sweep_reports_goodput(bench_server: ServerProcess, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "classifier",
                        "--sweep", "concurrency", "--sweep-steps", "1,2", "--slo-p99-ms", "1000",
                        "--duration-s", "1", "--warmup-s", "0.2")
    assert rc == 0
    assert [p["slo_ok"] for p in doc["points"]] == [True, True]
    best = doc["goodput"][bench_server.address]
    assert best["throughput_per_s"] == max(p["throughput_per_s"] for p in doc["points"])
    rc, doc, _ = _bench(capsys, tmp_path / "tight", "--target", bench_server.address, "--model", "classifier",
                        "--sweep", "rate", "--sweep-steps", "50,100", "--slo-p99-ms", "0.001",
                        "--duration-s", "1", "--warmup-s", "0.2")
    assert [p["slo_ok"] for p in doc["points"]] == [False]  # the sweep stops at the first break
    assert doc["goodput"][bench_server.address]["throughput_per_s"] is None


def test_a_wrong_answer_is_an_error(bench_server: ServerProcess, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "rec.npz"
    rc, _, _ = _bench(capsys, tmp_path / "record", "--target", bench_server.address, "--model", "classifier",
                      "--concurrency", "1", "--requests", "20", "--warmup-s", "0", "--record", str(recording))
    assert rc == 0
    with np.load(recording) as data:
        arrays = dict(data)
    assert sorted(arrays) == ["INPUT0", "expected:LOGITS", "expected:PROBS"]
    rc, doc, _ = _bench(capsys, tmp_path / "replay", "--target", bench_server.address, "--model", "classifier",
                        "--concurrency", "2", "--requests", "40", "--warmup-s", "0", "--data", str(recording),
                        "--check-every", "1")
    assert rc == 0 and doc["points"][0]["ok"] == 40 and doc["points"][0]["checked"] == 40
    arrays["expected:LOGITS"] = arrays["expected:LOGITS"] + 1
    np.savez(recording, **arrays)
    rc, doc, _ = _bench(capsys, tmp_path / "wrong", "--target", bench_server.address, "--model", "classifier",
                        "--concurrency", "2", "--requests", "40", "--warmup-s", "0", "--data", str(recording),
                        "--check-every", "4")
    assert rc == 1
    (point,) = doc["points"]
    assert point["errors"] == {"WRONG_ANSWER": 10} and point["ok"] == 30
    assert "wrong answer under load: output 'LOGITS' differs from the expected values by up to 1" in point["warnings"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "classifier", "--concurrency", "1"],
     "cannot reach 127.0.0.1:{port}: no gRPC server answered within 5 s"),
    (["--model", "nope", "--concurrency", "1"],
     "{address}: model 'nope': NOT_FOUND: model 'nope' is not in the model repository"),
    (["--model", "varlen", "--concurrency", "1"],
     "cannot infer the shape of input 'INPUT0' of model 'varlen': ModelMetadata gives [-1, -1]; pass --shape "
     "INPUT0:DIMS (without the batch dimension)"),
    (["--model", "classifier", "--rate", "50000"],
     "--rate 50000/s is beyond what 1 client process(es) can generate (at most ~20000/s each): add --processes"),
    (["--model", "classifier"], "nothing to measure: give --concurrency, --rate or --sweep"),
    (["--model", "classifier", "--sweep", "rate", "--sweep-steps", "0", "--requests", "100"],
     "--sweep-steps [0.0]: each must be above 0 (requests/s)"),
])
def test_bad_input_gets_a_clear_message_and_exit_2(bench_server: ServerProcess, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], args: list[str],
                                                   message: str) -> None:
    port = _closed_port()
    address = f"127.0.0.1:{port}" if "cannot reach" in message else bench_server.address
    rc, doc, err = _bench(capsys, tmp_path, "--target", address, *args)
    assert rc == 2 and not doc
    assert err.strip() == "infergate bench: error: " + message.format(port=port, address=address)


def test_variable_shape_runs_with_shape(bench_server: ServerProcess, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "varlen", "--shape",
                        "INPUT0:5", "--batch-size", "2", "--concurrency", "1", "--requests", "10", "--warmup-s", "0",
                        "--check-every", "1")
    assert rc == 0 and doc["points"][0]["ok"] == 10 and doc["points"][0]["checked"] == 10
    assert doc["targets"][bench_server.address]["inputs"] == [["INPUT0", "FP32", [-1, -1]]]


def test_a_rate_the_client_cannot_generate_is_reported_as_the_clients(bench_server: ServerProcess, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # One Python process spends ~300 us of CPU per request here: 20,000/s is several times what it can send.
    rc, doc, _ = _bench(capsys, tmp_path, "--target", bench_server.address, "--model", "classifier",
                        "--rate", "20000", "--duration-s", "1", "--warmup-s", "0", "--timeout-s", "2",
                        "--check-every", "0")
    assert rc == 1
    (point,) = doc["points"]
    assert point["client_limited"]
    assert point["warnings"][0].startswith("the client could not generate 20000 requests/s: it sent ")


def test_compare_interleaves_targets_and_reports_ratios(bench_server: ServerProcess, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, _ = _bench(capsys, tmp_path, "compare", "--servers", "", "--target", f"a={bench_server.address}",
                        "--target", f"b={bench_server.address}", "--models", "classifier", "--concurrency", "1,2",
                        "--rate", "50", "--duration-s", "1", "--warmup-s", "0.2")
    assert rc == 0
    assert [(p["target"], p["mode"], p["concurrency"] or p["rate_per_s"]) for p in doc["points"]] == [
        ("a", "closed", 1), ("b", "closed", 1), ("b", "closed", 2), ("a", "closed", 2), ("a", "open", 50),
        ("b", "open", 50)]  # the order rotates from point to point
    assert [(r["pair"], r["load"]) for r in doc["ratios"]] == [("a/b", "c=1"), ("a/b", "c=2"), ("a/b", "50/s")]
    assert all(r["throughput"] > 0 for r in doc["ratios"])
    assert set(doc["targets"]) == {"a", "b"}
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md"}


def test_compare_needs_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _bench(capsys, tmp_path, "compare", "--servers", "", "--concurrency", "1")
    assert rc == 2
    assert err.strip() == "infergate bench: error: nothing to compare: give --servers and/or --target NAME=ADDRESS"
