"""The `infergate` command line: serve a model repository (the built-in example by default)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from infergate.server import cascade_cli
from infergate.server.access import AccessConfigError
from infergate.server.addresses import ListenError
from infergate.server.app import DEFAULT_MAX_MESSAGE_BYTES, InferenceServer, ServerOptions
from infergate.server.checks import serve_flag_errors, serve_path_errors
from infergate.server.help_format import HelpFormatter
from infergate.server.loop import LOOPS, run_on_loop
from infergate.server.registry import EXECUTION_THREAD_PREFIX
from infergate.server.telemetry import cli as telemetry_cli
from infergate.server.tls import TlsConfigError, tls_options
from infergate.server.transports.flags import add_http2_flags, http2_limits

logger = logging.getLogger("infergate")


EXECUTION_JOIN_S = 1.0  # at exit, how long the model-execution threads get to end before the process leaves them
MAX_AUTO_WORKERS = 16  # --workers auto's ceiling: past it, the engine's one loop is the bound

class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an unknown flag is its own error, shown with its usage, not the top level's."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergate", description="Triton-compatible gRPC inference server.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC", formatter_class=HelpFormatter)
    serve.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                       help="Triton-layout model repository; default: the built-in example repository, "
                            "built on first use in the cache directory")
    serve.add_argument("--grpc-address", default="127.0.0.1:8001", metavar="HOST:PORT",
                       help="HOST:PORT, [IPV6]:PORT, PORT alone (on 127.0.0.1; 0 picks a free port) or unix:PATH "
                            "for a sidecar socket; 0.0.0.0:PORT listens on every interface")
    serve.add_argument("--metrics-address", default="127.0.0.1:8002", metavar="HOST:PORT",
                       help="HOST:PORT (or PORT alone, on 127.0.0.1) of the Prometheus /metrics endpoint; "
                            "'none' turns it off")
    serve.add_argument("--model-control-mode", choices=("none", "explicit"), default="none",
                       help="none: load every model at start; explicit: load only --load-model models and "
                            "allow RepositoryModelLoad/Unload")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="in explicit mode, a model to load at start (repeatable; '*' loads all)")
    serve.add_argument("--strict-readiness", type=_bool, nargs="?", const=True, default=True, metavar="BOOL",
                       help="true: ServerReady true and health SERVING only while every model that should be "
                            "loaded is; false: as soon as the server is up, even when models failed to load "
                            "(Triton's flag); default true")
    serve.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, metavar="BYTES",
                       help="largest gRPC request or response accepted, in bytes")
    serve.add_argument("--exit-timeout-s", type=float, default=30.0, metavar="S",
                       help="on SIGTERM/SIGINT, how long to wait for in-flight requests")
    serve.add_argument("--shutdown-delay-s", type=float, default=0.0, metavar="S",
                       help="on SIGTERM/SIGINT, how long to keep serving with health NOT_SERVING before refusing "
                            "new calls, so load balancers notice (a pre-stop pause; Triton has no such flag)")
    serve.add_argument("--max-inflight-requests", type=int, default=0, metavar="N",
                       help="inference requests received and not yet answered, server-wide, beyond which new "
                            "ones are refused with RESOURCE_EXHAUSTED; default 0, no limit")
    serve.add_argument("--model-execution-timeout-s", type=float, default=0.0, metavar="S",
                       help="longest one batch may run: past it its requests fail with DEADLINE_EXCEEDED and a "
                            "new instance takes its place (a model's parameter model_execution_timeout_s "
                            "overrides it); default 0, no limit")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                       help="gRPC front-end processes. 1 serves gRPC in this process; N > 1 starts N processes "
                            "that share the TCP port, speak --transport and forward to this one, which keeps the "
                            "models, batchers and statistics (gRPC framing, not compute, bounds one Python "
                            "process); auto: one per two usable cores, 1 on two cores or fewer")
    serve.add_argument("--transport", choices=("native", "grpcio"), default="native",
                       help="gRPC transport of this process: native is infergate's own HTTP/2 (a fraction of "
                            "grpcio's CPU per call); grpcio is the reference implementation. With --workers > 1, what "
                            "the worker processes speak")
    serve.add_argument("--loop", choices=LOOPS, default="auto",
                       help="event loop: auto takes uvloop when installed (10-17%% more requests/s measured "
                            "here), else asyncio's")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="least severe log messages printed (to stderr), by this process and its workers")
    _add_security_flags(serve)
    add_http2_flags(serve)
    telemetry_cli.add_serve_flags(serve)
    telemetry_cli.add_commands(commands)
    cascade_cli.add_commands(commands)
    example = commands.add_parser("example-repository", help="build the example repository and print its path")
    example.add_argument("dest", type=Path, nargs="?", default=None)
    from infergate.bench.cli import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    """TLS and access flags, in Triton's names so a Triton command line carries over."""
    group = serve.add_argument_group("security (Triton's flag names)")
    group.add_argument("--grpc-use-ssl", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="serve gRPC over TLS with --grpc-server-cert and --grpc-server-key")
    group.add_argument("--grpc-use-ssl-mutual", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="mutual TLS: also require a client certificate signed by --grpc-root-cert")
    group.add_argument("--grpc-server-cert", metavar="FILE", help="PEM certificate chain the server presents")
    group.add_argument("--grpc-server-key", metavar="FILE", help="PEM private key of --grpc-server-cert")
    group.add_argument("--grpc-root-cert", metavar="FILE", help="PEM CA bundle that signs client certificates")
    group.add_argument("--grpc-auth-token-file", type=Path, metavar="FILE",
                       help="bearer tokens, one per line (re-read on SIGHUP): every RPC but health then needs "
                            "'authorization: Bearer <token>' metadata, else UNAUTHENTICATED")
    group.add_argument("--grpc-restricted-protocol", action="append", default=[],
                       metavar="GROUP[,GROUP...]:KEY=VALUE",
                       help="calls of these protocol groups (health, metadata, inference, shared-memory, "
                            "model-config, model-repository, statistics, trace, logging) need header "
                            "'triton-grpc-protocol-KEY: VALUE', else UNAVAILABLE (repeatable)")
    group.add_argument("--grpc-socket-mode", type=_octal_mode, default=0o600, metavar="OCTAL",
                       help="permission bits of a unix: --grpc-address socket; default 600 (this user only)")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"expected permission bits in octal, 0 to 777 (e.g. 600), got {text!r}")
    return mode


def _example_repository(dest: Path | None) -> Path:
    from infergate.models.examples import build_example_repository, default_repository_dir

    return build_example_repository(dest or default_repository_dir())


def auto_workers(cores: int) -> int:
    """--workers auto: a front end per two cores, leaving the rest to the engine's batches and runtimes; one
    process on a small machine, where a worker costs a core the engine needs (bench/results/workers-*)."""
    return 1 if cores <= 2 else min(cores // 2, MAX_AUTO_WORKERS)


def _workers(text: str) -> int:
    if text == "auto":
        return auto_workers(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number of at least 1, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


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
    if args.command in cascade_cli.COMMANDS:
        return cascade_cli.run_command(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    """Checks every flag and binds the ports before any model loads, so a mistake costs no loading time."""
    errors = serve_flag_errors(args) + serve_path_errors(args)
    if errors:
        return _refuse(errors)
    repository = args.model_repository
    if repository is None:
        from infergate.models.examples import default_repository_dir

        repository = default_repository_dir()  # built below, once the ports are bound
    options = ServerOptions(
        model_repository=repository,
        grpc_address=args.grpc_address,
        metrics_address=None if args.metrics_address == "none" else args.metrics_address,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        max_message_bytes=args.max_message_bytes,
        exit_timeout_s=args.exit_timeout_s,
        max_inflight_requests=args.max_inflight_requests,
        model_execution_timeout_s=args.model_execution_timeout_s,
        shutdown_delay_s=args.shutdown_delay_s,
        workers=args.workers,
        transport=args.transport,
        loop=args.loop,
        log_level=args.log_level,
        tls=tls_options(args.grpc_use_ssl, args.grpc_use_ssl_mutual, args.grpc_server_cert, args.grpc_server_key,
                        args.grpc_root_cert),
        token_file=args.grpc_auth_token_file,
        restricted_protocols=tuple(args.grpc_restricted_protocol),
        socket_mode=args.grpc_socket_mode,
        is_strict_readiness=args.strict_readiness,
        http2_limits=http2_limits(args),
        telemetry=telemetry_cli.telemetry_options(args),
    )
    try:
        server = InferenceServer(options)  # reads the token file and certificates: bad ones stop it here
        server.reserve_addresses()
    except (TlsConfigError, AccessConfigError, ListenError) as exc:
        return _refuse([str(exc)])
    if args.model_repository is None:
        _example_repository(options.model_repository)
        logger.info("no --model-repository given: serving the example repository %s", options.model_repository)
    try:
        run_on_loop(server.serve(), args.loop)
    except ListenError as exc:
        return _refuse([str(exc)])
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    stuck = running_executions(EXECUTION_JOIN_S)
    if stuck:
        # Interpreter exit joins every executor thread, and these may never return (past their timeout, or a
        # retired model's run still going after the drain): the drain is done, so leave without them.
        logger.warning("%d model executions are still running after the drain (%s); exiting without waiting for "
                       "them", len(stuck), ", ".join(stuck))
        logging.shutdown()
        os._exit(0)
    return 0


def running_executions(wait_s: float) -> list[str]:
    """The model-execution threads still alive after `wait_s`: the idle ones of shut-down executors end at once,
    so those left are executions that did not end, counted or not (a retired model's count goes with it)."""
    deadline_s = time.monotonic() + wait_s
    stuck = []
    for thread in threading.enumerate():
        if thread.name.startswith(EXECUTION_THREAD_PREFIX):
            thread.join(max(deadline_s - time.monotonic(), 0))
            if thread.is_alive():
                stuck.append(thread.name)
    return stuck


def _refuse(errors: list[str]) -> int:
    """argparse's way: each error on its own line after the command's name, and exit status 2."""
    for error in errors:
        print(f"infergate serve: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
