"""Tracing: a client's W3C traceparent continues inside the server, seen through an in-memory exporter."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from infergate.server.app import InferenceServer, ServerOptions
from infergate.server.telemetry.options import TelemetryOptions
from infergate.server.telemetry.tracing import build_tracer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


async def _infer(server: InferenceServer, headers: dict[str, str] | None = None, rows: int = 2) -> None:
    client = aioclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        x = aioclient.InferInput("INPUT0", [rows, 16], "FP32")
        x.set_data_from_numpy(np.ones((rows, 16), np.float32))
        await client.infer("plain", [x], headers=headers, request_id="r-1")
    finally:
        await client.close()


def _run(repository: Path, exporter: InMemorySpanExporter, ratio: float,
         calls: list[dict[str, str] | None]) -> None:
    async def main() -> None:
        options = ServerOptions(model_repository=repository, grpc_address="127.0.0.1:0", metrics_address=None,
                                exit_timeout_s=2.0,
                                telemetry=TelemetryOptions(span_exporter=exporter, trace_sampling_ratio=ratio))
        server = InferenceServer(options)
        await server.start()
        try:
            for headers in calls:
                await _infer(server, headers)
        finally:
            await server.stop()

    asyncio.run(main())


def test_client_trace_continues_in_the_server(telemetry_repository: Path) -> None:
    exporter = InMemorySpanExporter()
    _run(telemetry_repository, exporter, 0.0, [{"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}])
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"ModelInfer", "queue", "compute"}
    request = spans["ModelInfer"]
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == SPAN_ID
    assert request.attributes["infergate.model"] == "plain" and request.attributes["infergate.version"] == "1"
    assert request.attributes["infergate.request_id"] == "r-1"
    assert request.attributes["rpc.grpc.status_code"] == "OK"
    assert request.attributes["infergate.batch.rows"] == 2
    assert str(request.attributes["infergate.batch.id"]).startswith("plain@")
    for child in (spans["queue"], spans["compute"]):
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert child.context.trace_id == request.context.trace_id
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    assert spans["queue"].end_time <= spans["compute"].start_time


def test_unsampled_client_trace_and_ratio_zero_record_nothing(telemetry_repository: Path) -> None:
    exporter = InMemorySpanExporter()
    _run(telemetry_repository, exporter, 0.0, [{"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}, None])
    assert exporter.get_finished_spans() == ()


def test_ratio_one_starts_new_traces(telemetry_repository: Path) -> None:
    exporter = InMemorySpanExporter()
    _run(telemetry_repository, exporter, 1.0, [None, None])
    roots = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert len(roots) == 2 and roots[0].parent is None
    assert roots[0].context.trace_id != roots[1].context.trace_id


def test_exporter_none_is_no_tracer() -> None:
    assert build_tracer("none", 1.0) is None


def test_missing_otlp_exporter_says_so_once(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)  # not installed
    assert build_tracer("otlp", 0.01) is None
    assert [r.getMessage() for r in caplog.records] == [
        "--trace-exporter otlp: opentelemetry-exporter-otlp-proto-grpc is not installed; serving without tracing"]


def test_unreachable_otlp_endpoint_serves_and_says_once(telemetry_repository: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")

    async def main() -> None:
        options = ServerOptions(model_repository=telemetry_repository, grpc_address="127.0.0.1:0",
                                metrics_address=None, exit_timeout_s=2.0,
                                telemetry=TelemetryOptions(trace_exporter="otlp", trace_sampling_ratio=1.0,
                                                           otlp_endpoint="http://127.0.0.1:9"))
        server = InferenceServer(options)
        await server.start()
        try:
            for _ in range(3):
                await _infer(server)
            assert server.telemetry.tracer is not None
            await asyncio.to_thread(server.telemetry.tracer.provider.force_flush, 3000)
        finally:
            await server.stop()

    with caplog.at_level("WARNING", logger="infergate"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if "traces are not reaching" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("traces are not reaching the OTLP endpoint http://127.0.0.1:9 (")
