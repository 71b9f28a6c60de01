"""`infergate bench compare`: one scenario against several servers in one run, interleaved point by point."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infergate.bench import peer_kit
from infergate.bench import perf_compare as pc
from infergate.bench.loadgen import report
from infergate.bench.loadgen.errors import BenchError
from infergate.bench.loadgen.points import Point
from infergate.bench.loadgen.runner import LoadRunner, Workload
from infergate.bench.loadgen.session import LoadPlan, Target, check_plan, prepare_target, run_plan
from infergate.bench.loadgen.workload import grpc_target
from infergate.server.help_format import HelpFormatter

logger = logging.getLogger(__name__)

# infergate beside Triton (which takes 8001): its own ports, so that every server runs at once and points interleave.
INFERGATE_CMD = ("infergate serve --model-repository {repo} --grpc-address 127.0.0.1:8011 "
                 "--metrics-address 127.0.0.1:8012")
SERVE_SLACK_S = 600  # a server's lifetime beyond the run's longest possible duration, s
POINT_OVERHEAD_S = 8.0  # per point beyond warm-up and window: start-up slack, drain, reference requests, s


def add_parser(sub: Any) -> None:
    from infergate.bench.cli import add_load_options

    repo_root = pc.REPO_ROOT
    parser = sub.add_parser(
        "compare", help="the same load against several servers, interleaved, with ratios",
        description="Starts the named servers (infergate, and Triton and MLServer with their launchers in "
                    f"{peer_kit.PEERS_DIR}), all at once on their own ports, and measures each point against "
                    "each server in turn (the order rotating), so drift on a noisy machine hits all alike. Ratios "
                    "are of the first target over each other one.",
        formatter_class=HelpFormatter)
    parser.add_argument("--servers", default="infergate,triton,mlserver",
                        help="servers to start, comma-separated: " + ", ".join(pc.SERVER_NAMES) + " ('' for none)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=ADDRESS", dest="targets",
                        help="an already-running server to include (repeatable)")
    parser.add_argument("--models", default="mlp_small", help="comma-separated models every target serves")
    parser.add_argument("--cache", type=Path, default=peer_kit.default_bench_cache(),
                        help=f"reference models and peer venvs, kept between runs (env {peer_kit.CACHE_ENV})")
    parser.add_argument("--work", type=Path, default=peer_kit.default_work_dir("compare"),
                        help="scratch: infergate's model repository")
    default_python = repo_root / ".venv" / "bin" / "python"
    parser.add_argument("--python", type=Path, default=default_python if default_python.exists() else None,
                        help="interpreter with infergate, for readiness checks")
    parser.add_argument("--infergate-cmd", default=INFERGATE_CMD, help="infergate's command line; {repo} replaced")
    parser.add_argument("--ready-timeout-s", type=int, default=pc.READY_TIMEOUT_S)
    add_load_options(parser)


def _parse_targets(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise BenchError(f"--target {item!r}: expected NAME=HOST:PORT or NAME=unix:PATH")
        pairs.append((name, grpc_target(address)))
    return pairs


def pc_config(args: argparse.Namespace, servers: list[str], models: list[str], out: Path) -> pc.Config:
    """perf_compare's settings, for its server classes (start, readiness, CPU, stop) and perf_analyzer runs."""
    python = args.python or Path(sys.executable)
    return pc.Config(servers=servers, models=models, concurrency=[], out=out.resolve(), cache=args.cache.resolve(),
                     work=args.work.resolve(), python=python, infergate_cmd=args.infergate_cmd,
                     measurement_ms=pc.FULL_MEASUREMENT_MS, max_trials=pc.FULL_MAX_TRIALS,
                     retry_stability_pct=pc.FULL_RETRY_STABILITY_PCT, rounds=1, ready_timeout_s=args.ready_timeout_s,
                     pa_args=[])


def _serve_budget_s(args: argparse.Namespace, plan: LoadPlan, targets: int, models: int) -> int:
    points = len(plan.concurrency) + len(plan.rates) + (plan.sweep.max_steps if plan.sweep_mode else 0)
    per_point = args.warmup_s + args.duration_s + POINT_OVERHEAD_S
    return int(points * per_point * targets * models + args.ready_timeout_s * targets + SERVE_SLACK_S)


@contextlib.contextmanager
def started_servers(cfg: pc.Config, names: list[str], serve_s: int) -> Iterator[list[tuple[pc.Server, pc.ServerRun]]]:
    """Starts each named server (all running at once); yields those that started; stops them all."""
    running: list[tuple[pc.Server, pc.ServerRun]] = []
    try:
        for name in names:
            raw_dir = cfg.out / "raw" / name
            raw_dir.mkdir(parents=True, exist_ok=True)
            server = pc.SERVER_CLASSES[name](cfg, cfg.models, raw_dir)
            run = pc.ServerRun(server=name, round=1)
            logger.info("starting %s", name)
            try:
                server.start(run, serve_s)
            except RuntimeError as exc:
                server.stop()
                raise BenchError(f"{name} did not start: {exc}") from None
            logger.info("%s ready in %.1f s on port %d: %s", name, run.start_s, server.grpc_port, run.metadata)
            running.append((server, run))
        yield running
    finally:
        for server, _ in running:
            logger.info("stopping %s", server.name)
            server.stop()


def _cpu_s(server: pc.Server) -> float:
    return server.cpu_ticks() / pc.CLK_TCK


def ratios(points: list[Point], first: str) -> list[dict[str, Any]]:
    """The first target over each other one, at the same model, mode and load."""
    rows = []
    for p in points:
        if p.target == first:
            continue
        ours = next((q for q in points if q.target == first and (q.model, q.mode, q.load) == (p.model, p.mode, p.load)),
                    None)
        if ours is None or not p.throughput_per_s:
            continue

        def ratio(key: str, mine: Point = ours, theirs: Point = p) -> str:
            a, b = mine.latency_ms.get(key), theirs.latency_ms.get(key)
            return f"{a / b:.2f}x" if a and b else "-"

        rows.append({"model": p.model, "load": p.load_label, "mode": p.mode, "pair": f"{first}/{p.target}",
                     "throughput": round(ours.throughput_per_s / p.throughput_per_s, 3),
                     "p50": ratio("p50"), "p99": ratio("p99")})
    return rows


def _peer_versions(cfg: pc.Config, names: list[str]) -> dict[str, str]:
    versions = {}
    if "triton" in names:
        versions["triton (nvidia-pytriton)"] = pc._package_version(cfg.cache / "triton" / "venv" / "bin" / "python",
                                                                   "nvidia-pytriton")
    if "mlserver" in names:
        versions["mlserver"] = pc._package_version(cfg.cache / "mlserver" / "venv" / "bin" / "python", "mlserver")
    return versions


def run(args: argparse.Namespace) -> int:
    from infergate.bench.cli import check_common, command_line, data_from_args, exit_status, plan_from_args

    check_common(args)
    plan = plan_from_args(args)
    check_plan(plan)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [s for s in names if s not in pc.SERVER_NAMES]:
        raise BenchError(f"--servers: unknown {unknown}; expected some of {list(pc.SERVER_NAMES)}")
    external = _parse_targets(args.targets)
    if len(names) + len(external) < 1:
        raise BenchError("nothing to compare: give --servers and/or --target NAME=ADDRESS")
    if args.out is None:
        raise BenchError("--out is required for compare (results and server logs go there)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cfg = pc_config(args, names, models, args.out)
    if names:
        pc.ensure_models(cfg)  # the harness is the client here: no perf_analyzer needed
    data = data_from_args(args)

    def _on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through started_servers: servers stopped

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_term)
    meta = report.host_metadata(_peer_versions(cfg, names))
    points: list[Point] = []
    goodput: dict[str, Any] = {}
    described: dict[str, Any] = {}
    serve_s = _serve_budget_s(args, plan, len(names) + len(external), len(models))
    with started_servers(cfg, names, serve_s) as running, LoadRunner(args.processes, not args.quiet) as runner:
        addresses: list[tuple[str, str, pc.Server | None]] = [(s.name, f"127.0.0.1:{s.grpc_port}", s)
                                                               for s, _ in running]
        addresses += [(name, address, None) for name, address in external]
        for model in models:
            targets: list[Target] = []
            for label, address, server in addresses:
                shape_of = functools.partial(
                    Workload, target=address, label=label, model=model, processes=args.processes,
                    channels=args.channels, warmup_s=args.warmup_s, window_s=args.duration_s, timeout_s=args.timeout_s,
                    check_every=args.check_every, seed=args.seed)
                target = prepare_target(label, address, model, args.model_version, data, shape_of)
                if server is not None:
                    target.server_cpu = functools.partial(_cpu_s, server)
                    target.extra["start_command"] = next(r.start_command for s, r in running if s is server)
                targets.append(target)
                described[label] = target.describe()
            model_points, model_goodput = run_plan(runner, targets, plan)
            points += model_points
            goodput.update({f"{k} {model}": v for k, v in model_goodput.items()})
            doc = report.document(meta, command_line(), _settings(args), described, points, goodput,
                                  ratios(points, addresses[0][0]))
            report.write_json(doc, args.out / "results.json")  # after each model: partial results survive
    meta["loadavg_at_end"] = list(os.getloadavg())
    doc = report.document(meta, command_line(), _settings(args), described, points, goodput,
                          ratios(points, addresses[0][0]))
    print(report.markdown(doc))
    for path in report.write_all(doc, args.out, with_plots=not args.no_plots):
        logger.info("wrote %s", path)
    return exit_status(points)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
