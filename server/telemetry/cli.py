"""Telemetry's part of the command line: `serve` flags, and the `stats` and `drift-profile` commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from infergate.server.telemetry.cost import DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR, parse_price
from infergate.server.telemetry.options import (
    DEFAULT_DRIFT_EVERY_BATCHES,
    DEFAULT_DRIFT_PSI_THRESHOLD,
    DEFAULT_TRACE_SAMPLING_RATIO,
    TelemetryOptions,
)
from infergate.server.telemetry.tracing import EXPORTERS

logger = logging.getLogger(__name__)

COMMANDS = ("stats", "drift-profile")
DEFAULT_STATS_ADDRESS = "127.0.0.1:8002"  # the server's --metrics-address default
STATS_TIMEOUT_S = 10.0


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("telemetry")
    group.add_argument("--telemetry", choices=("on", "off"), default="on",
                       help="off: ModelStatistics counters only (no latency sketches, histograms, cost, "
                            "tracing or drift)")
    group.add_argument("--cpu-core-price-usd-per-hour", default=str(DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR),
                       help="what one CPU core costs per hour (default: one vCPU of an on-demand AWS c7i)")
    group.add_argument("--gpu-price-usd-per-hour", default=None,
                       help="what one GPU costs per hour; default: a rough on-demand price by GPU model")
    group.add_argument("--trace-exporter", choices=EXPORTERS, default="none",
                       help="OpenTelemetry span exporter; none turns tracing off")
    group.add_argument("--trace-sampling-ratio", type=float, default=DEFAULT_TRACE_SAMPLING_RATIO,
                       help="share of requests traced when the client sent no traceparent")
    group.add_argument("--otlp-endpoint", default=None,
                       help="OTLP gRPC endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317)")
    group.add_argument("--drift-every-batches", type=int, default=DEFAULT_DRIFT_EVERY_BATCHES,
                       help="the drift monitor histograms one batch in this many; 0 turns drift off")
    group.add_argument("--drift-psi-threshold", type=float, default=DEFAULT_DRIFT_PSI_THRESHOLD,
                       help="a feature's PSI above this logs a warning")


def telemetry_options(args: argparse.Namespace) -> TelemetryOptions:
    """The options from `serve` flags; a bad price is reported once and replaced by the default."""
    cpu_price = DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR
    try:
        cpu_price = parse_price(args.cpu_core_price_usd_per_hour, "--cpu-core-price-usd-per-hour")
    except ValueError as exc:
        logger.warning("%s; using the default %g", exc, DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR)
    gpu_price = None
    if args.gpu_price_usd_per_hour is not None:
        try:
            gpu_price = parse_price(args.gpu_price_usd_per_hour, "--gpu-price-usd-per-hour")
        except ValueError as exc:
            logger.warning("%s; using the default price per GPU model", exc)
    ratio = args.trace_sampling_ratio
    if not 0.0 <= ratio <= 1.0:
        logger.warning("--trace-sampling-ratio is %s, expected 0..1; using %g", ratio, DEFAULT_TRACE_SAMPLING_RATIO)
        ratio = DEFAULT_TRACE_SAMPLING_RATIO
    return TelemetryOptions(
        is_enabled=args.telemetry == "on", cpu_core_price_usd_per_hour=cpu_price, gpu_price_usd_per_hour=gpu_price,
        trace_exporter=args.trace_exporter, trace_sampling_ratio=ratio, otlp_endpoint=args.otlp_endpoint,
        drift_every_batches=max(args.drift_every_batches, 0), drift_psi_threshold=args.drift_psi_threshold)


def add_commands(commands: Any) -> None:
    stats = commands.add_parser("stats", help="print a running server's latency, rate and cost per model")
    stats.add_argument("--address", default=DEFAULT_STATS_ADDRESS,
                       help="HOST:PORT of the server's --metrics-address (it serves /stats.json)")
    stats.add_argument("--window", choices=("1m", "5m", "all"), default="1m",
                       help="last minute, last five minutes, or since start")
    stats.add_argument("--json", action="store_true", help="print the raw /stats.json")
    profile = commands.add_parser("drift-profile", help="build a model's drift reference profile from training data")
    profile.add_argument("--model-dir", type=Path, required=True, help="the model's folder in the repository")
    profile.add_argument("--data", type=Path, required=True, help="training data: a .npy array [rows, features]")
    profile.add_argument("--input", default=None, help="the model input it describes (default: the first)")
    profile.add_argument("--bins", type=int, default=10, help="bins per feature (quantiles of the data)")


def run_command(args: argparse.Namespace) -> int:
    if args.command == "stats":
        return _stats(args)
    from infergate.server.telemetry.drift_profile import build_profile_command

    return build_profile_command(args.model_dir, args.data, args.input, args.bins)


def _stats(args: argparse.Namespace) -> int:
    from infergate.server.telemetry.table import stats_table

    url = f"http://{args.address}/stats.json"
    try:
        with urllib.request.urlopen(url, timeout=STATS_TIMEOUT_S) as response:
            snapshot = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"infergate stats: cannot read {url}: {exc} (is the server running with --metrics-address "
              f"{args.address}?)", file=sys.stderr)
        return 1
    print(json.dumps(snapshot, indent=2) if args.json else stats_table(snapshot, args.window))
    return 0
