"""What the edge costs: perf_analyzer on mlp_small, plaintext before/after a change, and TLS / mutual TLS.

    python -m infergate.bench.edge_cost --out bench/results/security-2026-12-01/edge-cost \
        --before 6573f95 --after HEAD --rounds 2

Variants run interleaved, one server at a time, odd rounds in this order and even rounds reversed: `before` (the tree at
--before, from a git worktree, plaintext), `plain` (this tree), `tls`, `mtls`, and `token` (a bearer
token required, sent by perf_analyzer as a header). The machine has two cores that perf_analyzer
shares with the server: read ratios within one run, not absolute figures across runs. With --after,
every other variant runs from a worktree of that commit too, loaded as `before` is: the same code
ran 4 % faster from a worktree than editable-installed, which a before/after ratio must not count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from infergate.bench.peer_kit import default_bench_cache
from infergate.bench.perf_compare import CLK_TCK, _parse_csv, _proc_stat, _run_timed

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("before", "plain", "tls", "mtls", "token")
SUBPACKAGES = ("proto", "server", "batching", "models", "kernels", "cascade", "bench")  # as setup.py installs them
MEASUREMENT_MS = 4000  # perf_analyzer -p
MAX_TRIALS = 6  # perf_analyzer --max-trials
STABILITY_PCT = 25  # perf_analyzer -s: two shared cores rarely hold 10 %
PA_TIMEOUT_S = 120
READY_TIMEOUT_S = 120
TOKEN = "bench-token-5b0d7c1e"
CONFIG_PBTXT = """name: "mlp_small"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""


@dataclass
class Cell:
    variant: str
    round: int
    command: str
    infer_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    server_cpu_us_per_infer: float | None = None
    client_cpu_pct: float | None = None
    loadavg_before: float = 0.0
    error: str | None = None
    csv_row: dict[str, str] = field(default_factory=dict)


def mlp_small(path: Path) -> None:
    """64 -> 256 -> 10 with ReLU and softmax, fixed seed (the peers' benchmark model, same shapes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((64, 256)) / 8).astype(np.float32), "W0"),
             numpy_helper.from_array(np.zeros(256, np.float32), "B0"),
             numpy_helper.from_array((rng.standard_normal((256, 10)) / 16).astype(np.float32), "W1"),
             numpy_helper.from_array(np.zeros(10, np.float32), "B1")]
    nodes = [helper.make_node("Gemm", ["INPUT0", "W0", "B0"], ["h0"]), helper.make_node("Relu", ["h0"], ["h0r"]),
             helper.make_node("Gemm", ["h0r", "W1", "B1"], ["h1"]),
             helper.make_node("Softmax", ["h1"], ["OUTPUT0"], axis=1)]
    graph = helper.make_graph(nodes, "mlp_small",
                              [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def before_tree(commit: str, work: Path) -> Path:
    """A PYTHONPATH entry whose `infergate` package is the tree at commit (a worktree, this tree's kernels)."""
    worktree = work / f"tree-{commit}"
    if not worktree.exists():
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(worktree), commit],
                       check=True, capture_output=True)
        for built in (REPO_ROOT / "kernels").glob("*.so"):  # the compiled kernels did not change
            shutil.copy(built, worktree / "kernels" / built.name)
    package = work / f"path-{commit}" / "infergate"
    if not package.exists():
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for name in SUBPACKAGES:
            if (worktree / name).exists():  # older trees lack the newer folders
                (package / name).symlink_to(worktree / name)
    return package.parent


def _serve_command(variant: str, repo: Path, pki: dict[str, Path], token_file: Path) -> list[str]:
    command = [sys.executable, "-m", "infergate.server", "serve", "--model-repository", str(repo),
               "--grpc-address", "127.0.0.1:0", "--metrics-address", "none"]
    if variant == "tls":
        command += ["--grpc-use-ssl", "--grpc-server-cert", str(pki["server.crt"]),
                    "--grpc-server-key", str(pki["server.key"])]
    elif variant == "mtls":
        command += ["--grpc-use-ssl-mutual", "--grpc-server-cert", str(pki["server.crt"]),
                    "--grpc-server-key", str(pki["server.key"]), "--grpc-root-cert", str(pki["ca.crt"])]
    elif variant == "token":
        command += ["--grpc-auth-token-file", str(token_file)]
    return command


def _pa_flags(variant: str, pki: dict[str, Path]) -> list[str]:
    if variant in ("tls", "mtls"):
        flags = ["--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file", str(pki["ca.crt"])]
        if variant == "mtls":
            flags += ["--ssl-grpc-private-key-file", str(pki["client.key"]),
                      "--ssl-grpc-certificate-chain-file", str(pki["client.crt"])]
        return flags
    if variant == "token":
        return ["-H", f"authorization:Bearer {TOKEN}"]
    return []


def _start(command: list[str], env: dict[str, str], log_path: Path,
           ready_timeout_s: float = READY_TIMEOUT_S) -> tuple[subprocess.Popen[bytes], int]:
    """Starts a server and waits for its ready line; returns it and its port."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "gRPC on " in text:
            port = int(text.split("gRPC on ", 1)[1].split(";")[0].split(" ")[0].rpartition(":")[2])
            return process, port
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in {ready_timeout_s} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(variant: str, rnd: int, args: argparse.Namespace, repo: Path, pki: dict[str, Path], token_file: Path,
            env: dict[str, str], raw: Path) -> Cell:
    command = _serve_command(variant, repo, pki, token_file)
    process, port = _start(command, env, raw / f"{variant}-r{rnd}.log")
    csv_path, out_path = raw / f"{variant}-r{rnd}.csv", raw / f"{variant}-r{rnd}.txt"
    pa = [str(args.perf_analyzer), "-i", "grpc", "-u", f"127.0.0.1:{port}", "-m", "mlp_small",
          "--shape", "INPUT0:64", "--concurrency-range", str(args.concurrency), "-p", str(MEASUREMENT_MS),
          "--max-trials", str(MAX_TRIALS), "-s", str(STABILITY_PCT), "-f", str(csv_path), *_pa_flags(variant, pki)]
    cell = Cell(variant, rnd, shlex.join(pa).replace(TOKEN, "<token>"), loadavg_before=os.getloadavg()[0])
    try:
        stat0 = _proc_stat(process.pid)
        rc, wall_s, client_cpu_s = _run_timed(pa, out_path, PA_TIMEOUT_S)
        stat1 = _proc_stat(process.pid)
        cell.client_cpu_pct = round(100 * client_cpu_s / max(wall_s, 1e-3), 1)
        if rc == 0 and csv_path.exists() and (row := _parse_csv(csv_path)):
            cell.csv_row = row
            cell.infer_per_s = float(row["Inferences/Second"])
            cell.p50_us, cell.p99_us = float(row["p50 latency"]), float(row["p99 latency"])
            if stat0 and stat1:
                # perf_analyzer's whole run (warm-up and every window) over the requests it counted.
                server_cpu_s = (stat1[1] - stat0[1]) / CLK_TCK
                cell.server_cpu_us_per_infer = round(1e6 * server_cpu_s / (cell.infer_per_s * wall_s), 1)
        else:
            cell.error = f"perf_analyzer exited {rc}: " + out_path.read_text(errors="replace")[-400:]
    finally:
        _stop(process)
    return cell


def _pki(directory: Path) -> dict[str, Path]:
    from infergate.bench.certs import make_pki  # the tests' throw-away PKI too

    pki = make_pki(directory)
    return {"ca.crt": pki.ca.cert, "server.crt": pki.server.cert, "server.key": pki.server.key,
            "client.crt": pki.client.cert, "client.key": pki.client.key}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def report(cells: list[Cell], args: argparse.Namespace, loadavg: tuple[float, float]) -> str:
    by_variant = {v: [c for c in cells if c.variant == v] for v in args.variants}
    rows = {v: {k: _median([getattr(c, k) for c in cs]) for k in ("infer_per_s", "p50_us", "p99_us",
                                                                    "server_cpu_us_per_infer")}
            for v, cs in by_variant.items()}
    base = rows.get("plain", {}).get("infer_per_s")
    lines = [f"# Edge cost: mlp_small, perf_analyzer c={args.concurrency}, {args.rounds} rounds (medians)", "",
             f"Command: `{' '.join(sys.argv)}`  ", f"Host: {platform.node()}, {os.cpu_count()} cores; load average "
             f"{loadavg[0]:.2f} at start, {loadavg[1]:.2f} at end (perf_analyzer shares the cores).  ",
             f"Commit: {_commit()}; before = {args.before}; after = {args.after or 'this tree, as installed'}.", "",
             "| variant | infer/s | vs plain | P50 us | P99 us | server CPU us/infer |", "|---|---|---|---|---|---|"]
    for variant, row in rows.items():
        ratio = f"{row['infer_per_s'] / base:.3f}" if base and row["infer_per_s"] else "-"
        lines.append(f"| {variant} | {_fmt(row['infer_per_s'])} | {ratio} | {_fmt(row['p50_us'])} | "
                     f"{_fmt(row['p99_us'])} | {_fmt(row['server_cpu_us_per_infer'])} |")
    lines += ["", "Every cell:", "", "| variant | round | infer/s | P99 us | server CPU us/infer | load | error |",
              "|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c.variant} | {c.round} | {_fmt(c.infer_per_s)} | {_fmt(c.p99_us)} | "
                     f"{_fmt(c.server_cpu_us_per_infer)} | {c.loadavg_before:.2f} | {c.error or ''} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _commit() -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.edge_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", default=None, help="git commit to measure as 'before' (plaintext)")
    parser.add_argument("--after", default=None,
                        help="run every other variant from a worktree of this commit too, loaded as 'before' is "
                             "(a worktree on PYTHONPATH measured 4 %% faster than the same code editable-installed)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--perf-analyzer", type=Path, default=default_bench_cache() / "perf_analyzer" / "perf_analyzer",
                        help="perf_analyzer (bash bench/peers/install_perf_analyzer.sh installs it there)")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v != "before" or args.before]
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="infergate-edge-") as scratch:
        work = Path(scratch)
        repo = work / "repo"
        (repo / "mlp_small" / "1").mkdir(parents=True)
        mlp_small(repo / "mlp_small" / "1" / "model.onnx")
        (repo / "mlp_small" / "config.pbtxt").write_text(CONFIG_PBTXT)
        pki = _pki(work / "pki")
        token_file = work / "tokens"
        token_file.write_text(TOKEN + "\n")
        envs = {v: dict(os.environ) for v in args.variants}
        if args.before:
            envs["before"]["PYTHONPATH"] = str(before_tree(args.before, work))
        if args.after:
            after_path = str(before_tree(args.after, work))
            for variant in args.variants:
                if variant != "before":
                    envs[variant]["PYTHONPATH"] = after_path
        loadavg0 = os.getloadavg()[0]
        cells = []
        try:
            for rnd in range(1, args.rounds + 1):
                # Even rounds run in reverse (ABBA), so no variant always meets the host first: the load
                # average climbs through a run as perf_analyzer and the servers heat the two cores.
                for variant in args.variants if rnd % 2 else tuple(reversed(args.variants)):
                    cell = measure(variant, rnd, args, repo, pki, token_file, envs[variant], raw)
                    print(f"{variant} r{rnd}: {cell.infer_per_s} infer/s, P99 {cell.p99_us} us, "
                          f"{cell.server_cpu_us_per_infer} us CPU/infer {cell.error or ''}", flush=True)
                    cells.append(cell)
        finally:
            for commit in (args.before, args.after):
                if commit:
                    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force",
                                    str(work / f"tree-{commit}")], capture_output=True)
    (args.out / "results.json").write_text(json.dumps([asdict(c) for c in cells], indent=1))
    text = report(cells, args, (loadavg0, os.getloadavg()[0]))
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
