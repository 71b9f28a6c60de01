"""OpenTelemetry spans per request, written after the response from the recorded timestamps."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from infergate.batching.batcher import Timings

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"  # W3C trace context, read from the request's gRPC metadata
EXPORTERS = ("none", "console", "otlp")


class RequestTracer:
    """Decides per request whether to trace (cheaply, before any SDK call) and emits its spans.

    Sampling: a client's `traceparent` decides when present (its sampled flag, as OpenTelemetry's
    ParentBased sampler does); otherwise `ratio` of requests start a trace of their own. Spans are
    built only for sampled requests, after the response is ready, with the recorded timestamps, so
    an unsampled request costs one metadata scan and one random draw.
    """

    def __init__(self, ratio: float, exporter: Any, *, is_simple: bool = False) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.ratio = ratio
        # The decision is ours (above); the SDK records whatever reaches it.
        self.provider = TracerProvider(sampler=ParentBased(ALWAYS_ON),
                                       resource=Resource.create({"service.name": "infergate"}))
        processor = SimpleSpanProcessor(exporter) if is_simple else BatchSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("infergate")
        self._propagator = TraceContextTextMapPropagator()
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()  # monotonic -> wall clock
        self._random = random.random

    def sample(self, metadata: Iterable[tuple[str, Any]] | None) -> Any | None:
        """The parent context to trace this request under, or None when it is not traced."""
        traceparent = None
        for key, value in metadata or ():
            if key == TRACEPARENT:
                traceparent = value
                break
        if traceparent is not None:
            from opentelemetry import trace

            context = self._propagator.extract({TRACEPARENT: traceparent})
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                return context if span_context.trace_flags.sampled else None
        if self._random() < self.ratio:
            from opentelemetry.context import Context

            return Context()
        return None

    def emit(self, parent: Any, attributes: dict[str, str | int], received_ns: int, sent_ns: int,
             timings: Timings | None, code: str) -> None:
        """The request span (receipt to response) and its queue, transform and compute children."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        wall = self._epoch_offset_ns
        span = self._tracer.start_span("ModelInfer", context=parent, kind=SpanKind.SERVER,
                                       start_time=received_ns + wall, attributes=attributes)
        span.set_attribute("rpc.grpc.status_code", code)
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        if timings is not None and timings.dispatched_ns:
            # The batch it joined: formed at dispatched_ns (unique per model), of batch_rows rows.
            span.set_attribute("infergate.batch.id", f"{attributes.get('infergate.model', '')}@{timings.dispatched_ns}")
            span.set_attribute("infergate.batch.rows", timings.batch_rows)
            inside = trace.set_span_in_context(span)
            for name, start_ns, end_ns in _phases(timings):
                child = self._tracer.start_span(name, context=inside, start_time=start_ns + wall)
                child.end(end_time=end_ns + wall)
        span.end(end_time=sent_ns + wall)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _phases(t: Timings) -> Sequence[tuple[str, int, int]]:
    phases = [("queue", t.enqueued_ns, t.dispatched_ns)]
    if t.transform_start_ns:
        phases.append(("transform", t.transform_start_ns, t.transform_end_ns))
    if t.compute_start_ns:
        phases.append(("compute", t.compute_start_ns, t.compute_end_ns))
    return phases


class _ReportOnceExporter:
    """Wraps an exporter so a failing endpoint is reported once, clearly, and serving goes on."""

    def __init__(self, inner: Any, where: str) -> None:
        self._inner = inner
        self._where = where
        self._has_reported = False

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._inner.export(spans)
        except Exception as exc:
            result, detail = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        else:
            detail = "the exporter reported failure"
        if result != SpanExportResult.SUCCESS and not self._has_reported:
            self._has_reported = True
            logger.warning("traces are not reaching %s (%s); spans are dropped, requests are served as usual",
                           self._where, detail)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._inner.force_flush(timeout_millis))


def build_tracer(exporter_name: str, ratio: float, otlp_endpoint: str | None = None,
                 span_exporter: Any = None) -> RequestTracer | None:
    """The tracer the options ask for, or None (tracing off) with one log line saying why."""
    if span_exporter is None and exporter_name == "none":
        return None
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        logger.warning("tracing requested (--trace-exporter %s) but opentelemetry-sdk is not installed "
                       "(pip install 'infergate[tracing]'); serving without tracing", exporter_name)
        return None
    if span_exporter is not None:
        return RequestTracer(ratio, span_exporter, is_simple=True)
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return RequestTracer(ratio, ConsoleSpanExporter())
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        logger.warning("--trace-exporter otlp: opentelemetry-exporter-otlp-proto-grpc is not installed; "
                       "serving without tracing")
        return None
    # Its retries log a warning per failed batch; ours says it once.
    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").setLevel(logging.CRITICAL)
    where = f"the OTLP endpoint {otlp_endpoint or '(OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317)'}"
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
    return RequestTracer(ratio, _ReportOnceExporter(exporter, where))
