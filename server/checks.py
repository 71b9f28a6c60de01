"""`infergate serve` flags checked before any work: every error at once, each naming the flag, value and need."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from infergate.server.addresses import AddressError, TcpAddress, parse_address
from infergate.server.telemetry.cost import parse_price
from infergate.server.tls import tls_options
from infergate.server.transports.flags import http2_limits

logger = logging.getLogger(__name__)

MAX_WINDOW_BYTES = 2**31 - 1  # the largest HTTP/2 flow-control window (RFC 9113 section 6.9.1)
MAX_SETTING = 2**32 - 1  # an HTTP/2 SETTINGS value is 32 bits
MAX_C_INT = 2**31 - 1  # grpc-core takes its channel arguments (message sizes, milliseconds) as C ints
GRPC_PREFIX_BYTES = 5  # gRPC's message prefix: one whole largest message plus this must fit in a window
# (flag dest, lowest, highest, what the bound is): flags whose values a protocol or grpc-core bounds.
BOUNDS = (
    ("max_message_bytes", 1, MAX_WINDOW_BYTES - GRPC_PREFIX_BYTES,
     "bytes (an HTTP/2 window holds one whole message and its 5-byte prefix)"),
    ("grpc_http2_max_frame_bytes", 16384, 16777215, "bytes (HTTP/2 SETTINGS_MAX_FRAME_SIZE)"),
    ("grpc_http2_stream_window_bytes", 0, MAX_WINDOW_BYTES, "bytes (the largest HTTP/2 window)"),
    ("grpc_http2_connection_window_bytes", 0, MAX_WINDOW_BYTES, "bytes (the largest HTTP/2 window)"),
    ("grpc_http2_max_concurrent_streams", 1, MAX_SETTING, "(an HTTP/2 SETTINGS value)"),
    ("grpc_http2_max_header_list_bytes", 1, MAX_SETTING, "bytes (an HTTP/2 SETTINGS value)"),
    ("grpc_keepalive_time", 0, MAX_C_INT, "ms (grpc-core's channel argument)"),
    ("grpc_keepalive_timeout", 0, MAX_C_INT, "ms (grpc-core's channel argument)"),
    ("grpc_http2_min_recv_ping_interval_without_data", 0, MAX_C_INT, "ms (grpc-core's channel argument)"),
    ("drift_every_batches", 0, MAX_C_INT, "batches (0 turns drift off)"),
    ("max_inflight_requests", 0, MAX_C_INT, "requests (0: no limit)"),
)


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def serve_flag_errors(args: argparse.Namespace) -> list[str]:
    """What is wrong with the parsed `serve` flags, without touching the filesystem or the network."""
    errors = _address_errors(args)
    if args.load_model and args.model_control_mode != "explicit":
        errors.append(f"--load-model {args.load_model[0]!r}: needs --model-control-mode explicit "
                      "(mode none loads every model in the repository)")
    not_finite = {dest for dest, value in vars(args).items() if isinstance(value, float) and not math.isfinite(value)}
    errors += [f"{flag_name(dest)} '{getattr(args, dest)}': expected a finite number" for dest in sorted(not_finite)]
    for dest, lowest, highest, unit in BOUNDS:
        value = getattr(args, dest, None)
        if value is not None and not lowest <= value <= highest:
            errors.append(f"{flag_name(dest)} {value}: expected {lowest}..{highest} {unit}")
    for dest, expected in (("exit_timeout_s", "a number of seconds >= 0"),
                           ("shutdown_delay_s", "a number of seconds >= 0"),
                           ("model_execution_timeout_s", "a number of seconds >= 0 (0: no limit)"),
                           ("trace_sampling_ratio", "0..1"),
                           ("drift_psi_threshold", "a number >= 0")):
        value = getattr(args, dest)
        ceiling = 1.0 if dest == "trace_sampling_ratio" else math.inf
        if dest not in not_finite and not 0.0 <= value <= ceiling:
            errors.append(f"{flag_name(dest)} {value}: expected {expected}")
    for check in (lambda: http2_limits(args), lambda: _tls(args), lambda: _prices(args)):
        try:
            check()
        except ValueError as exc:  # TlsConfigError is one
            errors.append(str(exc))
    return errors


def _address_errors(args: argparse.Namespace) -> list[str]:
    errors = []
    grpc = metrics = None
    try:
        grpc = parse_address(args.grpc_address, allow_unix=True)
    except AddressError as exc:
        errors.append(f"--grpc-address {args.grpc_address!r}: {exc}")
    if args.metrics_address != "none":
        try:
            metrics = parse_address(args.metrics_address, allow_unix=False)
        except AddressError as exc:
            errors.append(f"--metrics-address {args.metrics_address!r}: {exc}; or 'none' for no metrics endpoint")
    if isinstance(metrics, TcpAddress) and ":" in metrics.host:
        errors.append(f"--metrics-address {args.metrics_address!r}: expected an IPv4 HOST (the metrics endpoint "
                      "listens on IPv4 only)")
    if grpc is not None and not isinstance(grpc, TcpAddress) and args.workers > 1:
        errors.append(f"--workers {args.workers}: needs a TCP --grpc-address, not {grpc.text}: processes cannot "
                      "share a Unix socket path; use --workers 1 (the native transport) for a sidecar socket")
    if isinstance(grpc, TcpAddress) and isinstance(metrics, TcpAddress) and grpc.port and grpc == metrics:
        errors.append(f"--metrics-address {args.metrics_address!r}: the same address as --grpc-address; "
                      "expected another port")
    return errors


def _tls(args: argparse.Namespace) -> None:
    tls_options(args.grpc_use_ssl, args.grpc_use_ssl_mutual, args.grpc_server_cert, args.grpc_server_key,
                args.grpc_root_cert)


def _prices(args: argparse.Namespace) -> None:
    parse_price(args.cpu_core_price_usd_per_hour, "--cpu-core-price-usd-per-hour")
    if args.gpu_price_usd_per_hour is not None:
        parse_price(args.gpu_price_usd_per_hour, "--gpu-price-usd-per-hour")


def serve_path_errors(args: argparse.Namespace) -> list[str]:
    """What is wrong with the folders the flags name (read, never written); files the edge reads it checks."""
    repository: Path | None = args.model_repository
    if repository is None:
        return []
    if not repository.is_dir():
        why = "does not exist" if not repository.exists() else "is not a directory"
        return [f"--model-repository {str(repository)!r}: {why}; expected a Triton-layout model repository folder"]
    from infergate.models.repository import list_models

    models = list_models(repository)
    return [f"--load-model {name!r}: no such model in {repository} (it has: {', '.join(models) or 'none'})"
            for name in args.load_model if name != "*" and name not in models]

