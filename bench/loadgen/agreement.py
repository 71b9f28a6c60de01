"""`infergate bench agreement`: the harness and perf_analyzer, alternating on one infergate, must agree."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shlex
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infergate.bench import peer_kit
from infergate.bench import perf_compare as pc
from infergate.bench.loadgen import report
from infergate.bench.loadgen.errors import BenchError
from infergate.bench.loadgen.points import Point
from infergate.bench.loadgen.runner import LoadRunner, Workload
from infergate.bench.loadgen.session import DataOptions, prepare_target
from infergate.server.help_format import HelpFormatter

logger = logging.getLogger(__name__)

TOLERANCE = 0.10  # throughput and P50 of the harness within this fraction of perf_analyzer's


def add_parser(sub: Any) -> None:
    from infergate.bench.loadgen.compare import INFERGATE_CMD

    parser = sub.add_parser(
        "agreement", help="check the harness against perf_analyzer on one infergate",
        description="Starts infergate on the reference model, then alternates perf_analyzer and the harness at the "
                    f"same closed-loop concurrency; passes (exit 0) when the harness's median throughput and P50 "
                    f"are within {100 * TOLERANCE:g}% of perf_analyzer's.",
        formatter_class=HelpFormatter)
    parser.add_argument("--model", dest="agreement_model", metavar="NAME", default="mlp_small", help="reference model")
    parser.add_argument("--concurrency", dest="agreement_concurrency", metavar="C", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="perf_analyzer, harness pairs (order alternating)")
    parser.add_argument("--duration-s", dest="agreement_duration_s", metavar="S", type=float, default=10.0,
                        help="the harness's window")
    parser.add_argument("--warmup-s", dest="agreement_warmup_s", metavar="S", type=float, default=2.0)
    parser.add_argument("--measurement-ms", type=int, default=pc.FULL_MEASUREMENT_MS, help="perf_analyzer -p")
    parser.add_argument("--processes", dest="agreement_processes", metavar="N", type=int, default=1,
                        help="harness processes")
    parser.add_argument("--out", dest="agreement_out", metavar="DIR", type=Path, required=True, help="results folder")
    parser.add_argument("--cache", type=Path, default=peer_kit.default_bench_cache(),
                        help=f"perf_analyzer and the reference models, kept between runs (env {peer_kit.CACHE_ENV})")
    parser.add_argument("--work", type=Path, default=peer_kit.default_work_dir("agreement"),
                        help="scratch: infergate's model repository")
    parser.add_argument("--python", type=Path, default=None)
    parser.add_argument("--infergate-cmd", default=INFERGATE_CMD)
    parser.add_argument("--ready-timeout-s", type=int, default=pc.READY_TIMEOUT_S)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _within(ours: float | None, theirs: float | None) -> bool:
    return ours is not None and theirs is not None and theirs > 0 and abs(ours / theirs - 1) <= TOLERANCE


def verdict(pa_infer_per_s: float | None, pa_p50_ms: float | None, ours_infer_per_s: float | None,
            ours_p50_ms: float | None) -> dict[str, Any]:
    """Ratios of the harness over perf_analyzer and whether both are within TOLERANCE."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {"throughput_ratio": ratio(ours_infer_per_s, pa_infer_per_s), "p50_ratio": ratio(ours_p50_ms, pa_p50_ms),
            "tolerance": TOLERANCE,
            "agrees": _within(ours_infer_per_s, pa_infer_per_s) and _within(ours_p50_ms, pa_p50_ms)}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def run(args: argparse.Namespace) -> int:
    from infergate.bench.cli import command_line
    from infergate.bench.loadgen.compare import pc_config, started_servers

    out: Path = args.agreement_out
    model, concurrency = args.agreement_model, args.agreement_concurrency
    cfg = pc_config(args, ["infergate"], [model], out)
    cfg.measurement_ms = args.measurement_ms
    cfg.rounds = args.rounds  # perf_analyzer's raw files get a -r<round> suffix
    pc.ensure_models(cfg)
    try:
        pc.ensure_perf_analyzer(cfg)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    meta = report.host_metadata(
        {"perf_analyzer": (pc._output_of([str(cfg.perf_analyzer), "--version"]).splitlines() or ["unknown"])[0]})
    pa_runs: list[pc.Measurement] = []
    ours: list[Point] = []
    serve_s = args.rounds * (cfg.pa_timeout_s * 2 + int(args.agreement_duration_s) + 60) + 300
    with started_servers(cfg, ["infergate"], serve_s) as running, \
            LoadRunner(args.agreement_processes, show_progress=True) as runner:
        server, server_run = running[0]
        address = f"127.0.0.1:{server.grpc_port}"
        shape_of = functools.partial(Workload, target=address, label="harness", model=model,
                                     processes=args.agreement_processes, channels=None,
                                     warmup_s=args.agreement_warmup_s, window_s=args.agreement_duration_s,
                                     timeout_s=10.0, check_every=50, seed=0)
        target = prepare_target("harness", address, model, "", DataOptions(), shape_of)
        for rnd in range(1, args.rounds + 1):
            order = ("pa", "ours") if rnd % 2 else ("ours", "pa")
            for who in order:
                if who == "pa":
                    m = pc._measure(cfg, server, model, concurrency, rnd)
                    logger.info("perf_analyzer round %d: %s infer/s, P50 %s us%s", rnd, m.infer_per_s, m.p50_us,
                                f" [{m.error}]" if m.error else "")
                    pa_runs.append(m)
                else:
                    p = runner.run_point(target.workload, "closed", concurrency,
                                         server_cpu=functools.partial(lambda s: s.cpu_ticks() / pc.CLK_TCK, server))
                    logger.info("harness round %d: %.0f infer/s, P50 %s ms", rnd, p.throughput_per_s,
                                p.latency_ms.get("p50"))
                    ours.append(p)
    pa_tput = _median([m.infer_per_s for m in pa_runs])
    pa_p50 = _median([m.p50_us / 1000 if m.p50_us else None for m in pa_runs])
    our_tput = _median([p.throughput_per_s for p in ours])
    our_p50 = _median([p.latency_ms.get("p50") for p in ours])
    result = verdict(pa_tput, pa_p50, our_tput, our_p50)
    doc = {"metadata": meta, "command": command_line(), "server_command": server_run.start_command,
           "model": model, "concurrency": concurrency, "perf_analyzer": [asdict(m) for m in pa_runs],
           "harness": [asdict(p) for p in ours],
           "medians": {"perf_analyzer_infer_per_s": pa_tput, "perf_analyzer_p50_ms": pa_p50,
                       "harness_infer_per_s": our_tput, "harness_p50_ms": our_p50}, **result}
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = _markdown(doc, pa_runs, ours)
    (out / "agreement.md").write_text(text)
    print(text)
    return 0 if result["agrees"] else 1


def _markdown(doc: dict[str, Any], pa_runs: list[pc.Measurement], ours: list[Point]) -> str:
    meta, med = doc["metadata"], doc["medians"]
    rows = [f"| perf_analyzer round {m.round} | {m.infer_per_s or 0:,.0f} | "
            f"{(m.p50_us or 0) / 1000:.2f} | {(m.p99_us or 0) / 1000:.2f} | {m.client_cpu_pct} % | "
            f"{m.server_cpu_pct} % | {m.error or ''} |" for m in pa_runs]
    rows += [f"| harness round {i + 1} | {p.throughput_per_s:,.0f} | {p.latency_ms.get('p50') or 0:.2f} | "
             f"{p.latency_ms.get('p99') or 0:.2f} | {p.client_cpu_pct} % | {p.server_cpu_pct} % | "
             f"{'; '.join(p.warnings)} |" for i, p in enumerate(ours)]
    verdict_text = "AGREE" if doc["agrees"] else "DISAGREE"
    return "\n".join([
        f"# Harness vs perf_analyzer: {doc['model']}, closed loop c={doc['concurrency']}", "",
        f"{meta['date']} · {meta['cpu_model']} · {meta['cpu_count']} cores · commit `{meta['git_commit'][:12]}` · "
        f"load average at start {meta['loadavg_at_start'][0]:.2f}", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), "",
        "One infergate, perf_analyzer and the harness alternating against it (client and server share the cores).",
        "", "| run | infer/s | P50 ms | P99 ms | client CPU | server CPU | notes |", "|---|---|---|---|---|---|---|",
        *rows, "",
        f"Medians: perf_analyzer {med['perf_analyzer_infer_per_s']} infer/s, P50 {med['perf_analyzer_p50_ms']} ms; "
        f"harness {med['harness_infer_per_s']} infer/s, P50 {med['harness_p50_ms']} ms.", "",
        f"**{verdict_text}** (tolerance {100 * TOLERANCE:g}%): throughput ratio {doc['throughput_ratio']}, "
        f"P50 ratio {doc['p50_ratio']} (harness / perf_analyzer).", "",
        "## Commands", "", "```sh", doc["command"], "# infergate:", doc["server_command"],
        "# perf_analyzer (stdout and CSV under raw/infergate/):",
        *(shlex.join(shlex.split(c)) for m in pa_runs for c in m.commands), "```", ""])
