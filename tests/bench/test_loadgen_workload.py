"""Request building, shapes, response decoding and checks, recordings, and the report, without a server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infergate.bench.loadgen import report
from infergate.bench.loadgen import workload as wl
from infergate.bench.loadgen.errors import BenchError
from infergate.bench.loadgen.points import Point
from infergate.proto import grpc_service_pb2 as pb

INFO = wl.ModelInfo("m", "", "onnxruntime_onnx",
                    (wl.TensorInfo("X", "FP32", (-1, 4)), wl.TensorInfo("T", "BYTES", (-1, 2))),
                    (wl.TensorInfo("Y", "FP32", (-1, 4)),), 8, "infergate 0.1.0")


def test_shapes_come_from_metadata_with_the_batch_dimension() -> None:
    assert wl.resolve_shapes(INFO, 2, {}) == {"X": (2, 4), "T": (2, 2)}
    unbatched = wl.ModelInfo("u", "", "", (wl.TensorInfo("X", "INT32", (3, 4)),), (), 0, "")
    assert wl.resolve_shapes(unbatched, 1, {}) == {"X": (3, 4)}


def test_a_shape_that_cannot_be_inferred_is_named() -> None:
    var = wl.ModelInfo("v", "", "", (wl.TensorInfo("X", "FP32", (-1, -1)),), (), 8, "")
    with pytest.raises(BenchError, match=r"cannot infer the shape of input 'X' of model 'v': ModelMetadata gives "
                                         r"\[-1, -1\]; pass --shape X:DIMS"):
        wl.resolve_shapes(var, 1, {})
    assert wl.resolve_shapes(var, 1, {"X": (5,)}) == {"X": (1, 5)}
    with pytest.raises(BenchError, match=r"--shape names \['Z'\], not inputs of model 'v'"):
        wl.resolve_shapes(var, 1, {"Z": (5,)})
    with pytest.raises(BenchError, match="above max_batch_size 8"):
        wl.resolve_shapes(INFO, 9, {})


def test_shape_overrides_parse_like_perf_analyzer() -> None:
    assert wl.parse_shape_overrides(["INPUT0:64", "A:2,3"]) == {"INPUT0": (64,), "A": (2, 3)}
    with pytest.raises(BenchError, match="expected NAME:D1,D2"):
        wl.parse_shape_overrides(["INPUT0"])


def test_target_forms() -> None:
    assert wl.grpc_target("127.0.0.1:8001") == "127.0.0.1:8001"
    assert wl.grpc_target("unix:/tmp/s.sock") == "unix:/tmp/s.sock"
    with pytest.raises(BenchError, match="expected HOST:PORT or unix:PATH"):
        wl.grpc_target("localhost")


def test_request_encoding_round_trips() -> None:
    (inputs,) = wl.random_inputs(INFO, wl.resolve_shapes(INFO, 2, {}), 1, seed=0)
    request = pb.ModelInferRequest.FromString(wl.encode_request(INFO, inputs))
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("X", "FP32", [2, 4]),
                                                                            ("T", "BYTES", [2, 2])]
    assert np.array_equal(np.frombuffer(request.raw_input_contents[0], np.float32).reshape(2, 4), inputs["X"])
    assert wl._decode_bytes(request.raw_input_contents[1]) == list(inputs["T"].reshape(-1))
    assert [o.name for o in request.outputs] == ["Y"]


def _response(values: np.ndarray, raw: bool = True) -> bytes:
    response = pb.ModelInferResponse(model_name="m")
    tensor = response.outputs.add(name="Y", datatype="FP32", shape=list(values.shape))
    if raw:
        response.raw_output_contents.append(values.astype(np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.reshape(-1).tolist())
    return response.SerializeToString()


def test_responses_decode_from_raw_or_typed_contents_and_are_checked() -> None:
    want = {"Y": np.arange(8, dtype=np.float32).reshape(2, 4)}
    for raw in (True, False):
        got = wl.decode_response(_response(want["Y"], raw))
        assert wl.mismatch(got, want) is None
    assert wl.mismatch(wl.decode_response(_response(want["Y"] + 1e-7)), want) is None  # within float tolerance
    assert wl.mismatch(wl.decode_response(_response(want["Y"] + 1)), want) == \
        "output 'Y' differs from the expected values by up to 1"
    assert wl.mismatch({}, want) == "output 'Y' missing from the response"
    assert wl.mismatch({"Y": np.zeros(3, np.float32)}, want) == "output 'Y' has shape [3], expected [2, 4]"


def test_recordings_replay(tmp_path: Path) -> None:
    shapes = wl.resolve_shapes(INFO, 1, {})
    inputs = wl.random_inputs(INFO, shapes, 3, seed=1)
    outputs = [{"Y": x["X"] * 2} for x in inputs]
    wl.save_recording(tmp_path / "rec.npz", inputs, outputs)
    replayed, expected = wl.load_data(tmp_path / "rec.npz", INFO, shapes)
    assert len(replayed) == 3 and expected is not None
    assert np.array_equal(replayed[2]["X"], inputs[2]["X"]) and np.array_equal(expected[1]["Y"], outputs[1]["Y"])
    with pytest.raises(BenchError, match=r"input 'X' has shape \[3, 1, 4\], expected \[3, 2, 4\]"):
        wl.load_data(tmp_path / "rec.npz", INFO, wl.resolve_shapes(INFO, 2, {}))
    with pytest.raises(BenchError, match="not a readable .npz file"):
        wl.load_data(tmp_path / "missing.npz", INFO, shapes)


def test_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    points = []
    for target in ("a", "b"):
        for c in (1, 4):
            lat = np.arange(1, 501, dtype=np.int64) * 10_000 * c
            p = Point(target=target, model="m", mode="closed", concurrency=c, window_s=1.0, ok=500,
                      throughput_per_s=500.0 * c, sent_per_s=500.0 * c, latency_ms={"p50": 1.0 * c, "p90": 2.0 * c,
                      "p95": 2.5 * c, "p99": 3.0 * c, "p99.9": 4.0 * c}, errors={"UNAVAILABLE": 1} if c == 4 else {})
            from infergate.bench.loadgen import stats

            p.cdf_ms = stats.cdf_points_ms(lat)
            points.append(p)
    doc = report.document(report.host_metadata(), "infergate bench ...", {}, {"a": {}, "b": {}}, points,
                          ratios=[{"model": "m", "load": "c=1", "pair": "a/b", "throughput": 1.0, "p50": "1.00x",
                                   "p99": "1.00x"}])
    written = report.write_all(doc, tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "latency-vs-throughput-m-closed.png",
                                         "latency-cdf-m-closed.png"}
    text = (tmp_path / "results.md").read_text()
    assert "| a | m | c=4 | 2,000 | 2,000 | 4.00 | 8.00 | 10.00 | 12.00 | 16.00 | UNAVAILABLE 1 |" in text
    assert "## Ratios" in text
    assert all(p.stat().st_size > 1000 for p in written)
