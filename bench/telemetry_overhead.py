"""Telemetry overhead: perf_analyzer at c=16 on mlp_small, telemetry off vs defaults vs 1 % tracing, interleaved."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from infergate.bench.peer_kit import default_bench_cache, default_work_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = default_bench_cache()  # perf_analyzer and the reference models (as `infergate bench compare` leaves them)
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER") or CACHE / "perf_analyzer" / "perf_analyzer")
GRPC_ADDRESS, METRICS_ADDRESS = "127.0.0.1:18001", "127.0.0.1:18002"  # off the defaults others may use
# The variants: extra `infergate serve` flags. "off" is the baseline (ModelStatistics counters only).
VARIANTS = {
    "off": ["--telemetry", "off"],
    "defaults": [],
    "trace-1pct": ["--trace-exporter", "console", "--trace-sampling-ratio", "0.01"],
}
# mlp_small exactly as bench/perf_compare.py serves it (its _CONFIG_PBTXT).
CONFIG_PBTXT = """name: "mlp_small"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 64
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
READY_TIMEOUT_S = 120  # server start to its ready line, s
PA_TIMEOUT_S = 180  # one perf_analyzer run, s
WORK = default_work_dir("telemetry-overhead")  # the model repository
SERVE_LIMIT_S = 600  # `timeout` around each server: a crashed script never leaves one behind


def build_repository(work: Path) -> Path:
    repo = work / "repo"
    (repo / "mlp_small" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "mlp_small" / "1" / "model.onnx").write_bytes((CACHE / "models" / "mlp_small.onnx").read_bytes())
    (repo / "mlp_small" / "config.pbtxt").write_text(CONFIG_PBTXT)
    return repo


def start_server(repo: Path, flags: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Starts `infergate serve` in its own session (stopped by its PID) and waits for its ready line."""
    infergate = REPO_ROOT / ".venv" / "bin" / "infergate"
    cmd = ["timeout", "--signal=INT", "--kill-after=15", str(SERVE_LIMIT_S), str(infergate), "serve",
           "--model-repository", str(repo), "--grpc-address", GRPC_ADDRESS, "--metrics-address", METRICS_ADDRESS,
           *flags]
    with open(log_path, "ab") as log:  # the server keeps its own copy of the descriptor
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if "gRPC on" in log_path.read_text(errors="replace").split("$ ")[-1]:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}; see {log_path}")
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server not ready in {READY_TIMEOUT_S} s; see {log_path}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and its descendants (the `timeout` wrapper and the server), s."""
    total_ticks, pids = 0, [root_pid]
    while pids:
        pid = pids.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total_ticks / os.sysconf("SC_CLK_TCK")


def served_requests() -> int:
    """Requests the server answered so far (its ModelStatistics success count, via /metrics)."""
    with urllib.request.urlopen(f"http://{METRICS_ADDRESS}/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("infergate_requests_total{") and 'code="OK"' in line))


def perf_analyzer(stem: Path, measurement_ms: int, max_trials: int) -> tuple[list[str], dict[str, Any]]:
    """One perf_analyzer run at concurrency 16; infer/s and latency from its CSV (else its last windows)."""
    cmd = [str(PERF_ANALYZER), "-i", "grpc", "-u", GRPC_ADDRESS, "-m", "mlp_small", "--shape", "INPUT0:64",
           "--concurrency-range", "16", "-p", str(measurement_ms), "--max-trials", str(max_trials), "-s", "25",
           "-f", f"{stem}.csv", "--verbose-csv", "-v"]
    with open(f"{stem}.txt", "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=PA_TIMEOUT_S).returncode
    result: dict[str, Any] = {"rc": rc, "is_stable": False}
    if rc == 0 and Path(f"{stem}.csv").exists():
        with open(f"{stem}.csv") as f:
            row = next(csv.DictReader(f))
        result.update(is_stable=True, infer_per_s=float(row["Inferences/Second"]),
                      p50_us=float(row["p50 latency"]), p99_us=float(row["p99 latency"]))
    else:  # unstable: the median of its last three windows, as bench/perf_compare.py does
        windows = re.findall(r"throughput: ([\d.]+) infer/sec", Path(f"{stem}.txt").read_text(), re.IGNORECASE)
        if windows:
            result["infer_per_s"] = statistics.median(float(w) for w in windows[-3:])
    return cmd, result


def capture_telemetry(out: Path) -> None:
    """`infergate stats` and a Prometheus scrape, right after a load run (shown in the README)."""
    infergate = REPO_ROOT / ".venv" / "bin" / "infergate"
    for window in ("1m", "all"):
        stats = subprocess.run([str(infergate), "stats", "--address", METRICS_ADDRESS, "--window", window],
                               capture_output=True, text=True, timeout=30)
        (out / f"stats-{window}.txt").write_text(stats.stdout + stats.stderr)
    with urllib.request.urlopen(f"http://{METRICS_ADDRESS}/metrics", timeout=10) as response:
        (out / "metrics.txt").write_bytes(response.read())


def host() -> dict[str, Any]:
    head = (REPO_ROOT / ".git" / "HEAD").read_text().strip() if (REPO_ROOT / ".git" / "HEAD").exists() else ""
    commit = head
    if head.startswith("ref: ") and (REPO_ROOT / ".git" / head[5:]).exists():
        commit = (REPO_ROOT / ".git" / head[5:]).read_text().strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "commit_base": commit,
            "loadavg_start": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="results folder (raw/ inside)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of all variants, interleaved, order rotated")
    parser.add_argument("--measurement-ms", type=int, default=4000, help="perf_analyzer -p")
    parser.add_argument("--max-trials", type=int, default=6, help="perf_analyzer --max-trials")
    args = parser.parse_args(argv)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    meta = host()
    repo = build_repository(WORK)
    runs: list[dict[str, Any]] = []
    names = list(VARIANTS)
    for rnd in range(1, args.rounds + 1):
        # Rotated each round (A/B/C, B/C/A, C/A/B, ...): drifting background load on a shared host
        # then falls on every variant alike instead of always on the one that runs first.
        shift = (rnd - 1) % len(names)
        for variant in names[shift:] + names[:shift]:
            flags = VARIANTS[variant]
            stem = raw / f"{variant}-r{rnd}"
            server = start_server(repo, flags, raw / f"{variant}-r{rnd}-server.log")
            try:
                cpu0, served0 = cpu_seconds(server.pid), served_requests()
                cmd, result = perf_analyzer(stem, args.measurement_ms, args.max_trials)
                cpu_s, served = cpu_seconds(server.pid) - cpu0, served_requests() - served0
                # Server CPU per request over the whole perf_analyzer run: less sensitive than infer/s to
                # other load on a shared host (contention stretches wall time more than CPU time).
                result.update(server_cpu_s=round(cpu_s, 2), requests=served,
                              server_cpu_us_per_request=round(1e6 * cpu_s / served, 1) if served else None)
                if variant == "defaults" and rnd == args.rounds:
                    capture_telemetry(args.out)
            finally:
                stop_server(server)
            runs.append({"variant": variant, "round": rnd, "server_flags": flags, "perf_analyzer": shlex.join(cmd),
                         **result})
            print(f"round {rnd} {variant:>10}: {result.get('infer_per_s')} infer/s, "
                  f"{result.get('server_cpu_us_per_request')} us server CPU per request", flush=True)
    meta["loadavg_end"] = os.getloadavg()[0]
    medians = {v: statistics.median(r["infer_per_s"] for r in runs if r["variant"] == v and r.get("infer_per_s"))
               for v in VARIANTS}
    cpu = {v: statistics.median(r["server_cpu_us_per_request"] for r in runs
                                if r["variant"] == v and r.get("server_cpu_us_per_request"))
           for v in VARIANTS}
    summary = {v: {"median_infer_per_s": m, "overhead_pct": 100 * (1 - m / medians["off"]),
                   "median_server_cpu_us_per_request": cpu[v], "cpu_overhead_pct": 100 * (cpu[v] / cpu["off"] - 1)}
               for v, m in medians.items()}
    (args.out / "results.json").write_text(json.dumps({"host": meta, "runs": runs, "summary": summary}, indent=1))
    for v, s in summary.items():
        print(f"{v:>10}: median {s['median_infer_per_s']:.0f} infer/s "
              f"(throughput cost {s['overhead_pct']:+.1f} %), "
              f"{s['median_server_cpu_us_per_request']:.0f} us CPU per request "
              f"(CPU cost {s['cpu_overhead_pct']:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
