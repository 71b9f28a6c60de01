"""The `infergate` command line: serve a model repository (the built-in example by default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from infergate.server.app import DEFAULT_MAX_MESSAGE_BYTES, InferenceServer, ServerOptions
from infergate.server.telemetry import cli as telemetry_cli

logger = logging.getLogger("infergate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergate", description="Triton-compatible gRPC inference server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--model-repository", type=Path, default=None,
                       help="Triton-layout model repository; default: the built-in example repository, "
                            "built on first use in the cache directory")
    serve.add_argument("--grpc-address", default="127.0.0.1:8001",
                       help="HOST:PORT (port 0 picks a free one) or unix:PATH for a sidecar socket")
    serve.add_argument("--metrics-address", default="127.0.0.1:8002",
                       help="HOST:PORT of the Prometheus /metrics endpoint; 'none' turns it off")
    serve.add_argument("--model-control-mode", choices=("none", "explicit"), default="none",
                       help="none: load every model at start; explicit: load only --load-model models and "
                            "allow RepositoryModelLoad/Unload")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="in explicit mode, a model to load at start (repeatable; '*' loads all)")
    serve.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help="largest gRPC request or response accepted, in bytes")
    serve.add_argument("--exit-timeout-s", type=float, default=30.0,
                       help="on SIGTERM/SIGINT, how long to wait for in-flight requests")
    serve.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="event loop: auto takes uvloop when installed (10-17%% more requests/s measured "
                            "here), else asyncio's")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    telemetry_cli.add_serve_flags(serve)
    telemetry_cli.add_commands(commands)
    example = commands.add_parser("example-repository", help="build the example repository and print its path")
    example.add_argument("dest", type=Path, nargs="?", default=None)
    from infergate.bench.cli import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


def _example_repository(dest: Path | None) -> Path:
    from infergate.models.examples import build_example_repository, default_repository_dir

    return build_example_repository(dest or default_repository_dir())


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Runs the server on the chosen event loop (auto: uvloop if it imports, like uvicorn's)."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "bench":
        from infergate.bench.cli import run as run_bench

        return run_bench(args)
    if args.command == "example-repository":
        print(_example_repository(args.dest))
        return 0
    if args.command in telemetry_cli.COMMANDS:
        return telemetry_cli.run_command(args)
    repository = args.model_repository
    if repository is None:
        repository = _example_repository(None)
        logger.info("no --model-repository given: serving the example repository %s", repository)
    if not repository.is_dir():
        logger.error("--model-repository %s is not a directory", repository)
        return 2
    options = ServerOptions(
        model_repository=repository,
        grpc_address=args.grpc_address,
        metrics_address=None if args.metrics_address == "none" else args.metrics_address,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        max_message_bytes=args.max_message_bytes,
        exit_timeout_s=args.exit_timeout_s,
        telemetry=telemetry_cli.telemetry_options(args),
    )
    try:
        _run(InferenceServer(options).serve(), args.loop)
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
