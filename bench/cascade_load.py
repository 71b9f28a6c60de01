"""The cascade load test: the tuned digits cascade against its large stage alone, same rows, same order, ABBA.

    python -m infergate.bench.cascade_load --out bench/results/cascade-2026-12-02/load --rounds 4

The repository is cascade_datasets' digits_mlp pair: a logistic regression (64-10) and a trained MLP of
mlp_large's shape (64-1024-1024-1024-10), both ONNX, with the cascade `infergate cascade tune` writes from the
tuning rows. The request stream is the evaluation rows, one row a request, in one fixed order, for both variants
and both clients. Each cell starts a fresh server (the same command for both variants: the repository serves
all three models), snapshots /stats.json, runs the repository's harness (`infergate bench`) then
perf_analyzer at the same concurrency, snapshotting between, and stops it. Cost per inference is the server's
own figure: the busy time its telemetry prices, summed over the models a variant used, per row it answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from infergate.bench import cascade_cost as cc
from infergate.bench import cascade_datasets as cd
from infergate.bench.cascade_eval import run_tune, tune_command
from infergate.bench.edge_cost import _start, _stop
from infergate.bench.peer_kit import default_bench_cache
from infergate.bench.perf_compare import CLK_TCK, _parse_csv, _proc_stat, _run_timed, git_commit

logger = logging.getLogger(__name__)

DATASET = "digits_mlp"
VARIANTS = ("cascade", "large")
TOOLS = ("harness", "perf_analyzer")
WARMUP_S = 2.0  # harness warm-up before its window, excluded from its figures
PA_MEASUREMENT_MS = 4000  # perf_analyzer -p: one window
PA_MAX_TRIALS = 5  # perf_analyzer --max-trials: at most 5 windows, so a cell stays near 20 s
# perf_analyzer -s: its figures are the last 3 windows' mean once they agree within this; at 25 % it failed to
# settle on two cores that two other engineers' work shared (load average 2.5), so 50 %, as perf_compare --quick.
PA_STABILITY_PCT = 50
TOOL_SLACK_S = 60  # a client's time beyond its window before it is killed, s


def build(work: Path, out: Path, with_cascade: bool, rows_per_request: int = 1) -> dict[str, Any]:
    """The repository and the request stream; tunes the cascade unless told not to. Returns what was built."""
    spec = cd.DATASETS[DATASET]
    repository, data = work / "repository", work / "data"
    facts = cd.build_dataset(spec, repository, data)
    models = {"large": cd.large_name(spec)}
    stages = (cd.small_name(spec), cd.large_name(spec))
    if with_cascade:
        models["cascade"] = f"{DATASET}_cascade"
        command = tune_command(repository, models["cascade"], stages, data / "tune.npz", data / "eval.npz",
                               out / "raw" / "tune")
        (out / "raw" / "tune").mkdir(parents=True, exist_ok=True)
        facts["tune_report"] = run_tune(command, out / "raw" / "tune" / "tune.log")
        facts["tune_command"] = shlex.join(command).replace(str(work), "$WORK")
    with np.load(data / "eval.npz") as held_out:
        rows = np.asarray(held_out["INPUT0"], np.float32)
    facts.update(repository=repository, models=models, stages=stages,
                 stream=stream_files(rows, work, rows_per_request), rows_per_request=rows_per_request)
    return facts


def stream_files(rows: np.ndarray, work: Path, rows_per_request: int = 1) -> dict[str, Path]:
    """The same requests for both clients, in order (harness .npz, perf_analyzer JSON): request i holds the
    `rows_per_request` rows after request i - 1's, the evaluation rows cycled. perf_analyzer -b N takes N
    consecutive steps of its data for one request (checked against a cascade's stage batch sizes), so its
    steps are those rows one by one, and the stream, len(rows) requests, ends on a whole request."""
    order = np.arange(len(rows) * rows_per_request) % len(rows)
    npz, pa_json = work / "stream.npz", work / "stream.json"
    np.savez(npz, INPUT0=rows[order].reshape(len(rows), rows_per_request, -1))  # requests x [batch, features]
    pa_json.write_text(json.dumps({"data": [{"INPUT0": [float(v) for v in rows[i]]} for i in order]}))
    return {"npz": npz, "json": pa_json}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def stats(metrics_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/stats.json", timeout=10) as response:
        snapshot: dict[str, Any] = json.load(response)
    return snapshot


def harness_command(port: int, model: str, args: argparse.Namespace, stream: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "infergate.server", "bench", "--target", f"127.0.0.1:{port}", "--model", model,
            "--data", str(stream), "--batch-size", str(args.rows_per_request), "--concurrency", str(args.concurrency),
            "--duration-s", str(args.duration_s),
            "--warmup-s", str(WARMUP_S), "--out", str(out), "--quiet", "--no-plots"]


def pa_command(port: int, model: str, args: argparse.Namespace, stream: Path, csv_path: Path) -> list[str]:
    return [str(args.perf_analyzer), "-i", "grpc", "-u", f"127.0.0.1:{port}", "-m", model, "-b",
            str(args.rows_per_request), "--input-data", str(stream), "--concurrency-range", str(args.concurrency),
            "-p", str(PA_MEASUREMENT_MS),
            "--max-trials", str(PA_MAX_TRIALS), "-s", str(PA_STABILITY_PCT), "-f", str(csv_path)]


def client_figures(tool: str, out: Path, rows_per_request: int = 1) -> dict[str, float | None]:
    """Throughput (rows a second) and client-side latency percentiles (ms) from a client's own output files."""
    if tool == "harness":
        point = json.loads((out / "results.json").read_text())["points"][0]
        latency = point["latency_ms"]
        # The harness counts responses; perf_analyzer's Inferences/Second counts rows.
        return {"infer_per_s": point["throughput_per_s"] * rows_per_request, "p50_ms": latency.get("p50"),
                "p95_ms": latency.get("p95"), "p99_ms": latency.get("p99"),
                "errors": float(sum(point["errors"].values()))}
    if not (out / "perf_analyzer.csv").exists():
        return pa_stdout_figures((out / "stdout.txt").read_text(errors="replace"))
    row = _parse_csv(out / "perf_analyzer.csv")
    return {"infer_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p95_ms": float(row["p95 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3, "errors": None}


def pa_stdout_figures(text: str) -> dict[str, float | None]:
    """perf_analyzer's client figures from its printed summary, for a run that aborted before writing its CSV
    (it prints the client side, then reads the server's statistics, and a check there can abort it)."""
    client = text.rpartition("Client:")[2]
    if "Throughput:" not in client:
        raise ValueError("no client summary in perf_analyzer's output")
    figures: dict[str, float | None] = {
        "infer_per_s": float(client.split("Throughput: ", 1)[1].split(" ", 1)[0]), "errors": None,
        "from_stdout": 1.0}
    for name in ("p50", "p95", "p99"):
        figures[f"{name}_ms"] = float(client.split(f"{name} latency: ", 1)[1].split(" ", 1)[0]) / 1e3
    return figures


def run_tool(tool: str, rnd: int, variant: str, port: int, metrics_port: int, pid: int, facts: dict[str, Any],
             args: argparse.Namespace) -> dict[str, Any]:
    """One client against the running server: its figures, the server's cost over it, load averages."""
    model = facts["models"][variant]
    out = args.out / "raw" / f"r{rnd}-{variant}-{tool}"
    out.mkdir(parents=True, exist_ok=True)
    command = (harness_command(port, model, args, facts["stream"]["npz"], out) if tool == "harness"
               else pa_command(port, model, args, facts["stream"]["json"], out / "perf_analyzer.csv"))
    cell: dict[str, Any] = {"round": rnd, "variant": variant, "tool": tool, "model": model,
                            "command": shlex.join(command), "loadavg_before": loadavg()}
    before, cpu0 = stats(metrics_port), _proc_stat(pid)
    rc, wall_s, client_cpu_s = _run_timed(command, out / "stdout.txt", args.duration_s + WARMUP_S + TOOL_SLACK_S)
    after, cpu1 = stats(metrics_port), _proc_stat(pid)
    cell.update(loadavg_after=loadavg(), rc=rc, wall_s=round(wall_s, 2),
                client_cpu_pct=round(100 * client_cpu_s / max(wall_s, 1e-3), 1))
    (out / "stats_before.json").write_text(json.dumps(before, indent=1))
    (out / "stats_after.json").write_text(json.dumps(after, indent=1))
    work = cc.delta(before, after)
    stages = facts["stages"] if variant == "cascade" else ()
    cell.update(work=work, cost_per_inference_usd=cc.cost_per_inference_usd(work, model),
                stages_cost_per_inference_usd=cc.stages_cost_per_inference_usd(work, model, stages) if stages
                else None, escalated_fraction=cc.escalated_fraction(work, stages) if stages else None,
                profile=cc.compute_profile(work, stages or (model,)))
    if cpu0 and cpu1:
        rows = work.get(model, {}).get("inferences") or work.get(facts["stages"][0], {}).get("inferences")
        cell["server_cpu_us_per_infer"] = round(1e6 * (cpu1[1] - cpu0[1]) / CLK_TCK / rows, 1) if rows else None
    stdout = (out / "stdout.txt").read_text(errors="replace")
    try:
        cell.update(client_figures(tool, out, args.rows_per_request))
    except (OSError, KeyError, ValueError, IndexError) as exc:
        cell["error"] = f"{tool} exited {rc}, no figures ({exc!r}): " + stdout[-600:]
    else:
        if rc != 0:
            said = [line.strip() for line in stdout.splitlines() if "what()" in line or "rror" in line]
            cell["error"] = f"{tool} exited {rc} after its client summary (figures from it): {' '.join(said)[:200]}"
    return cell


def measure(rnd: int, variant: str, facts: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """A fresh server, both clients in turn against one variant, the server stopped."""
    command = [sys.executable, "-m", "infergate.server", "serve", "--model-repository", str(facts["repository"]),
               "--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0"]
    log = args.out / "raw" / f"r{rnd}-{variant}-server.log"
    process, port = _start(command, dict(os.environ), log)
    try:
        text = log.read_text(errors="replace")
        metrics_port = int(text.split("metrics on http://", 1)[1].split("/", 1)[0].rpartition(":")[2])
        cells = [run_tool(tool, rnd, variant, port, metrics_port, process.pid, facts, args) for tool in args.tools]
    finally:
        _stop(process)
    for cell in cells:
        cell["server_command"] = shlex.join(command).replace(str(facts["repository"]), "$WORK/repository")
    return cells


def summarise(cells: list[dict[str, Any]], tools: list[str], variants: list[str]) -> dict[str, Any]:
    keys = ("infer_per_s", "p50_ms", "p95_ms", "p99_ms", "cost_per_inference_usd", "stages_cost_per_inference_usd",
            "escalated_fraction",
            "server_cpu_us_per_infer")
    medians = {tool: {v: {k: cc.median_of([c for c in cells if c["tool"] == tool and c["variant"] == v], k)
                          for k in keys} for v in variants} for tool in tools}
    verdicts = {tool: cc.verdict(m["cascade"], m["large"]) for tool, m in medians.items()
                if "cascade" in m and "large" in m}
    profile = cc.profile_medians(cells)
    return {"medians": medians, "verdicts": verdicts, "profile": profile}


def readme(cells: list[dict[str, Any]], summary: dict[str, Any], facts: dict[str, Any], args: argparse.Namespace,
           argv: list[str], loadavgs: tuple[str, str]) -> str:
    lines = ["# Cascade load test: digits_mlp_cascade vs digits_mlp_large alone (issue 11)", "",
             f"Command: `python -m infergate.bench.cascade_load {shlex.join(argv)}`  ",
             f"Commit: {git_commit()}; host {platform.node()}, {os.cpu_count()} cores shared by server and client "
             f"(and other work: see the load averages).  ",
             f"Load average (/proc/loadavg) at start: {loadavgs[0]}; at end: {loadavgs[1]}.  ",
             f"Models: {facts['small']['kind']} then {facts['large']['kind']}; stream: {facts['rows']['eval']} "
             f"evaluation rows, {args.rows_per_request} row(s) a request, same order for both; concurrency "
             f"{args.concurrency}; "
             f"{args.rounds} rounds ABBA, a fresh server per cell; harness window {args.duration_s:g} s after "
             f"{WARMUP_S:g} s warm-up, perf_analyzer -p {PA_MEASUREMENT_MS} --max-trials {PA_MAX_TRIALS} "
             f"-s {PA_STABILITY_PCT}.", "",
             "Medians over rounds:", "", *cc.summary_table(summary["medians"]), ""]
    if summary["verdicts"]:
        lines += ["Targets (ratios of medians, cascade / large):", "", *cc.verdict_table(summary["verdicts"]), ""]
    lines += ["Where the server's compute went (medians; busy = the time telemetry prices, per row each model "
              "computed):", "", *cc.profile_table(summary["profile"])]
    lines += ["", "Every cell (load average: 1-min figure before -> after the client):", "",
              "| round | variant | tool | infer/s | P99 ms | cost per 1M USD | escalated % | server CPU us/infer | "
              "load | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        cost, esc = c.get("cost_per_inference_usd"), c.get("escalated_fraction")
        lines.append(f"| {c['round']} | {c['variant']} | {c['tool']} | {cc._fmt(c.get('infer_per_s'), 0)} | "
                     f"{cc._fmt(c.get('p99_ms'))} | {cc._fmt(None if cost is None else cost * 1e6, 4)} | "
                     f"{cc._fmt(None if esc is None else 100 * esc, 1)} | "
                     f"{cc._fmt(c.get('server_cpu_us_per_infer'), 0)} | "
                     f"{c['loadavg_before'].split()[0]} -> {c['loadavg_after'].split()[0]} | "
                     f"{(c.get('error') or '')[:160]} |")
    lines += ["", "Exact commands: each cell's `server_command` and `command` in results.json; raw outputs "
              "(server logs, harness results.json, perf_analyzer CSV, /stats.json before and after) in raw/."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.cascade_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rows-per-request", type=int, default=1,
                        help="rows in each request (a backend scoring candidates sends several)")
    parser.add_argument("--duration-s", type=float, default=20.0, help="harness window per cell")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="cascade,large or either alone")
    parser.add_argument("--tools", default=",".join(TOOLS), help="harness,perf_analyzer or either alone")
    parser.add_argument("--perf-analyzer", type=Path, default=default_bench_cache() / "perf_analyzer" / "perf_analyzer",
                        help="perf_analyzer (bash bench/peers/install_perf_analyzer.sh installs it there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants, args.tools = args.variants.split(","), args.tools.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raw").mkdir(exist_ok=True)
    start_load = loadavg()
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="infergate-cascade-load-") as scratch:
        facts = build(Path(scratch), args.out, with_cascade="cascade" in variants,
                      rows_per_request=args.rows_per_request)
        for rnd, variant in cc.abba(variants, args.rounds):
            for cell in measure(rnd, variant, facts, args):
                print(f"r{rnd} {variant} {cell['tool']}: {cell.get('infer_per_s')} infer/s, P99 {cell.get('p99_ms')} "
                      f"ms, {cell.get('cost_per_inference_usd')} USD/infer, load {cell['loadavg_before']} "
                      f"{cell.get('error') or ''}", flush=True)
                cells.append(cell)
    summary = summarise(cells, args.tools, variants)
    kept = {k: v for k, v in facts.items() if k not in ("repository", "stream")}
    doc = {"facts": kept, "cells": cells, "summary": summary, "loadavg": [start_load, loadavg()]}
    (args.out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    text = readme(cells, summary, facts, args, sys.argv[1:] if argv is None else argv, (start_load, loadavg()))
    (args.out / "README.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
