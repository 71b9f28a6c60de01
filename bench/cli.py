"""`infergate bench`: the load-test harness's command line (run, compare, agreement)."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from infergate.server.help_format import HelpFormatter

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 10.0  # measurement window per point, s
DEFAULT_WARMUP_S = 2.0  # excluded from the figures, s
DEFAULT_TIMEOUT_S = 10.0  # per-request gRPC deadline, s
BENCH_EXTRA = "pip install 'infergate[bench]'"  # brings matplotlib (the PNG plots) and rich (the progress display)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `bench` and `bench compare`: what to send, which points, how the client is shaped."""
    group = parser.add_argument_group("load")
    group.add_argument("--concurrency", type=_ints, default=(), metavar="C,...",
                       help="closed-loop points: requests kept in flight")
    group.add_argument("--rate", type=_floats, default=(), metavar="R,...",
                       help="open-loop points: Poisson arrivals per second")
    group.add_argument("--sweep", choices=("concurrency", "rate"), default=None,
                       help="step the load up until P99 breaks --slo-p99-ms; report goodput")
    group.add_argument("--sweep-steps", type=_floats, default=(), metavar="L,...",
                       help="the sweep's loads in order (default: --sweep-start times --sweep-factor each step)")
    group.add_argument("--sweep-start", type=float, default=None, help="first load (default 1 client or 100/s)")
    group.add_argument("--sweep-factor", type=float, default=2.0, help="growth per step")
    group.add_argument("--sweep-max-steps", type=int, default=10, help="points at most per target")
    group.add_argument("--sweep-refine", type=int, default=0, help="bisection points after the SLO breaks")
    group.add_argument("--slo-p99-ms", type=float, default=100.0, help="the sweep's SLO on P99 latency")
    group.add_argument("--max-error-rate", type=float, default=0.001, help="the sweep's SLO on errors")
    group.add_argument("--duration-s", type=float, default=DEFAULT_WINDOW_S, help="measurement window per point")
    group.add_argument("--warmup-s", type=float, default=DEFAULT_WARMUP_S, help="warm-up before each window")
    group.add_argument("--requests", type=int, default=None,
                       help="measure this many requests per point instead of a window: closed loop, --duration-s "
                            "then bounds the time; open loop, the window is N / rate")
    group.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per-request deadline")
    data = parser.add_argument_group("data")
    data.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    data.add_argument("--batch-size", type=int, default=1, help="rows per request for a batching model")
    data.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                      help="an input's shape without the batch dimension, where ModelMetadata has -1 (repeatable)")
    data.add_argument("--data", type=Path, default=None,
                      help=".npz of requests (key per input, requests on the first axis; 'expected:OUT' keys hold "
                           "expected outputs); default: random data")
    data.add_argument("--record", type=Path, default=None,
                      help="write the requests and their unloaded answers to this .npz (replay with --data)")
    data.add_argument("--distinct-requests", type=int, default=16, help="random requests, sent in turn")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--check-every", type=int, default=50,
                      help="check one response in N against the expected outputs (0: none); a wrong answer is an "
                           "error")
    client = parser.add_argument_group("client")
    client.add_argument("--processes", type=int, default=1, help="client processes")
    client.add_argument("--channels", type=int, default=None,
                        help="gRPC channels (TCP connections) per process (default: one per 6 clients, as "
                             "perf_analyzer, or per 1000 requests/s, at most 8)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="folder for results.json, results.md and PNG plots")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress display (also when CI is set or not a tty)")
    out.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_parser(commands: Any) -> None:
    """Adds `bench` (with `compare` and `agreement`) to the `infergate` subcommands."""
    bench = commands.add_parser(
        "bench", help="load-test a KServe v2 gRPC server (infergate, Triton, MLServer)",
        description="Closed-loop, open-loop (Poisson) and SLO-sweep load over the KServe v2 gRPC protocol. "
                    "Exit status: 0 measured, 1 a point was limited by the client or got wrong answers, "
                    "2 bad input or unusable target.",
        formatter_class=HelpFormatter)
    bench.add_argument("--target", default=None, help="HOST:PORT or unix:PATH of the server")
    bench.add_argument("--model", default=None, help="model name")
    bench.add_argument("--label", default=None, help="the target's name in results (default: --target)")
    add_load_options(bench)
    sub = bench.add_subparsers(dest="bench_command", metavar="{compare,agreement}")
    from infergate.bench.loadgen import agreement, compare

    compare.add_parser(sub)
    agreement.add_parser(sub)


def plan_from_args(args: argparse.Namespace) -> Any:
    from infergate.bench.loadgen.session import LoadPlan
    from infergate.bench.loadgen.sweep import SweepPlan

    mode = {"concurrency": "closed", "rate": "open", None: None}[args.sweep]
    start = args.sweep_start if args.sweep_start is not None else (1.0 if mode == "closed" else 100.0)
    sweep = SweepPlan(steps=args.sweep_steps, start=start, factor=args.sweep_factor, max_steps=args.sweep_max_steps,
                      refine=args.sweep_refine, integer=mode == "closed")
    return LoadPlan(concurrency=args.concurrency, rates=args.rate, sweep_mode=mode, sweep=sweep,
                    slo_p99_ms=args.slo_p99_ms, max_error_rate=args.max_error_rate, request_count=args.requests)


def data_from_args(args: argparse.Namespace) -> Any:
    from infergate.bench.loadgen import workload as wl
    from infergate.bench.loadgen.session import DataOptions

    return DataOptions(batch_size=args.batch_size, shapes=wl.parse_shape_overrides(args.shape), data=args.data,
                       record=args.record, distinct=args.distinct_requests, seed=args.seed,
                       check_every=args.check_every)


def check_common(args: argparse.Namespace) -> None:
    from infergate.bench.loadgen.errors import BenchError

    for name in ("duration_s", "timeout_s", "processes", "batch_size", "distinct_requests"):
        if getattr(args, name) <= 0:
            raise BenchError(f"--{name.replace('_', '-')} must be above 0, got {getattr(args, name)}")
    if args.warmup_s < 0 or args.check_every < 0 or (args.requests is not None and args.requests < 1):
        raise BenchError("--warmup-s and --check-every must not be negative, --requests at least 1")
    if args.channels is not None and args.channels < 1:
        raise BenchError("--channels must be at least 1")


def command_line() -> str:
    """How this run was invoked, for the results."""
    argv0 = Path(sys.argv[0]).name
    prefix = ["infergate"] if argv0 in ("infergate", "__main__.py", "cli.py") else [argv0]
    return shlex.join(prefix + sys.argv[1:])


def exit_status(points: list[Any]) -> int:
    """1 when a point measured the client rather than the server, or got wrong answers."""
    from infergate.bench.loadgen.worker import WRONG_ANSWER

    bad = [p for p in points if p.client_limited or WRONG_ANSWER in p.errors]
    return 1 if bad else 0


def _run_single(args: argparse.Namespace) -> int:
    from infergate.bench.loadgen import report
    from infergate.bench.loadgen.errors import BenchError
    from infergate.bench.loadgen.runner import LoadRunner, Workload
    from infergate.bench.loadgen.session import check_plan, prepare_target, run_plan
    from infergate.bench.loadgen.workload import grpc_target

    if not args.target or not args.model:
        raise BenchError("--target and --model are required (or use `infergate bench compare`)")
    check_common(args)
    plan = plan_from_args(args)
    check_plan(plan)
    address = grpc_target(args.target)
    label = args.label or args.target
    shape_of = functools.partial(Workload, target=address, label=label, model=args.model, processes=args.processes,
                                 channels=args.channels, warmup_s=args.warmup_s, window_s=args.duration_s,
                                 timeout_s=args.timeout_s, check_every=args.check_every, seed=args.seed)
    target = prepare_target(label, address, args.model, args.model_version, data_from_args(args), shape_of)
    with LoadRunner(args.processes, show_progress=not args.quiet) as runner:
        points, goodput = run_plan(runner, [target], plan)
    meta = report.host_metadata({"server": target.info.server})
    doc = report.document(meta, command_line(), _settings(args), {label: target.describe()}, points, goodput)
    print(report.markdown(doc))
    if args.out:
        for path in report.write_all(doc, args.out, with_plots=not args.no_plots):
            logger.info("wrote %s", path)
    return exit_status(points)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("command",) and not callable(v)}


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def without_missing_extras(args: argparse.Namespace) -> None:
    """Before any work: no PNG plots without matplotlib and no progress display without rich, one line each.

    The results themselves need neither, so a run without the `bench` extra still writes all of them."""
    from infergate.bench.loadgen.errors import BenchError
    from infergate.bench.loadgen.runner import _quiet

    if getattr(args, "out", None) and not args.no_plots and not _imports("matplotlib"):
        print(f"infergate bench: matplotlib is not installed, so no PNG plots; the other results are written in "
              f"full ({BENCH_EXTRA} adds the plots)", file=sys.stderr)
        args.no_plots = True
    if _quiet() or getattr(args, "quiet", False) or _imports("rich"):
        return
    if args.bench_command == "agreement":  # always shows progress on a terminal: it has no --quiet
        raise BenchError(f"rich is not installed, which the progress display on a terminal needs: {BENCH_EXTRA}, "
                         f"or run with CI=1")
    print(f"infergate bench: rich is not installed, so no progress display ({BENCH_EXTRA} adds it)", file=sys.stderr)
    args.quiet = True


def run(args: argparse.Namespace) -> int:
    """Runs `infergate bench ...`; returns the exit status."""
    from infergate.bench.loadgen import agreement, compare
    from infergate.bench.loadgen.errors import BenchError

    try:
        without_missing_extras(args)
        if args.bench_command == "compare":
            return compare.run(args)
        if args.bench_command == "agreement":
            return agreement.run(args)
        return _run_single(args)
    except BenchError as exc:
        print(f"infergate bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("infergate bench: interrupted", file=sys.stderr)
        return 130
