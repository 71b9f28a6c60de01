"""Telemetry: latency sketches, Prometheus export, cost, tracing and drift for served models."""
