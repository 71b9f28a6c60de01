"""Server instructions per ModelInfer call, counted by callgrind: a noise-free A/B across commits.

    python -m infergate.bench.call_instructions --commits 6573f95,HEAD --calls 2000
    python -m infergate.bench.call_instructions --commits 6573f95,HEAD,HEAD,6573f95 --concurrency 16 \
        --perf-analyzer .perf_analyzer/perf_analyzer

Timings on two shared cores move by 5-10 % from one server process to the next; instruction counts
move by about 1 %. Each commit's server (a worktree of it, this tree's compiled kernels) runs under
`valgrind --tool=callgrind` on mlp_small. The load is a grpcio client outside valgrind (--calls
calls, --concurrency in flight over --connections), or perf_analyzer at --concurrency for
--measure-s with calls counted by ModelStatistics. Counters are zeroed after a warm-up and dumped
after the measured calls. Counts leave out the kernel (syscalls) and cache misses, and include
onnxruntime's own instructions (single-threaded, no spinning), so they bound a front-end change
from below; read them beside bench/edge_cost.py's wall-clock figures, not instead of them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infergate.bench.edge_cost import CONFIG_PBTXT, REPO_ROOT, _stop, before_tree, mlp_small
from infergate.bench.edge_cost import _start as _start_server

WARMUP_CALLS = 300
READY_TIMEOUT_S = 600  # python, numpy and onnxruntime imported under valgrind take minutes


def _request_body() -> bytes:
    from infergate.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="mlp_small")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.random.default_rng(0).random(64, np.float32).tobytes())
    return request.SerializeToString()


def _calls(port: int, body: bytes, count: int, concurrency: int, connections: int) -> None:
    """count calls, concurrency of them in flight at any time (a closed loop), spread over connections."""
    import grpc

    # Without a local subchannel pool grpc-core shares one connection among channels to one address.
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    try:
        infers = [channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") for channel in channels]
        in_flight = [(i, infers[i % connections].future(body, timeout=120)) for i in range(min(concurrency, count))]
        sent = len(in_flight)
        while in_flight:
            slot, call = in_flight.pop(0)
            call.result()
            if sent < count:
                in_flight.append((slot, infers[slot % connections].future(body, timeout=120)))
                sent += 1
    finally:
        for channel in channels:
            channel.close()


def _start(env: dict[str, str], repo: Path, log_path: Path, out_file: Path,
           cache_sim: bool) -> tuple[subprocess.Popen[bytes], int]:
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "--dump-instr=no",
               f"--cache-sim={'yes' if cache_sim else 'no'}",
               sys.executable, "-m", "infergate.server", "serve", "--model-repository", str(repo),
               "--grpc-address", "127.0.0.1:0", "--metrics-address", "none"]
    return _start_server(command, env, log_path, READY_TIMEOUT_S)


def _inference_count(port: int) -> int:
    """Successful inferences so far, from ModelStatistics (one call, counted in the measurement)."""
    import grpc

    from infergate.proto import grpc_service_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stats = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics",
                                    request_serializer=pb.ModelStatisticsRequest.SerializeToString,
                                    response_deserializer=pb.ModelStatisticsResponse.FromString)
        reply = stats(pb.ModelStatisticsRequest(name="mlp_small"), timeout=60)
    return sum(m.inference_stats.success.count for m in reply.model_stats)


def measure(commit: str, args: argparse.Namespace, work: Path, repo: Path, body: bytes) -> tuple[float, str]:
    """Instructions per call for one commit, and its callgrind dump."""
    env = dict(os.environ)
    if commit != "HEAD":
        env["PYTHONPATH"] = str(before_tree(commit, work))
    out_file = work / f"callgrind.{commit}.out"
    process, port = _start(env, repo, work / f"server-{commit}.log", out_file, args.cache_sim)
    load = None
    try:
        if args.perf_analyzer:
            # perf_analyzer as the load, as bench/edge_cost.py runs it; its windows are long enough that
            # it is still sending when the counters are dumped.
            load = subprocess.Popen([str(args.perf_analyzer), "-i", "grpc", "-u", f"127.0.0.1:{port}", "-m",
                                     "mlp_small", "--shape", "INPUT0:64", "--concurrency-range",
                                     str(args.concurrency), "-p", "600000", "--max-trials", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(args.warmup_s)
            count0 = _inference_count(port)
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True, capture_output=True)
            time.sleep(args.measure_s)
            subprocess.run(["callgrind_control", "--dump=measured", str(process.pid)], check=True,
                           capture_output=True)
            calls = _inference_count(port) - count0
        else:
            _calls(port, body, WARMUP_CALLS, args.concurrency, args.connections)
            subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True, capture_output=True)
            _calls(port, body, args.calls, args.concurrency, args.connections)
            subprocess.run(["callgrind_control", "--dump=measured", str(process.pid)], check=True,
                           capture_output=True)
            calls = args.calls
    finally:
        if load is not None:
            os.killpg(load.pid, signal.SIGKILL)
            load.wait()
        _stop(process)
    parts = sorted(out_file.parent.glob(out_file.name + ".*"))
    measured = [p for p in parts if "measured" in p.read_text(errors="replace")[:2000]]
    if not measured:
        raise RuntimeError(f"no callgrind dump for {commit} in {[p.name for p in parts]}")
    text = measured[0].read_text(errors="replace")
    events = re.search(r"^events: (.+)$", text, re.M)
    totals = re.search(r"^(?:summary|totals): ([\d ]+)$", text, re.M)
    if events is None or totals is None:
        raise RuntimeError(f"no totals in {measured[0]}")
    counts = dict(zip(events.group(1).split(), (int(v) for v in totals.group(1).split()), strict=True))
    others = ", ".join(f"{name} {value / calls:,.0f}" for name, value in counts.items() if name != "Ir")
    print(f"{commit}: {calls} calls measured" + (f"; per call: {others}" if others else ""), flush=True)
    return counts["Ir"] / calls, str(measured[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.call_instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", default="6573f95,HEAD", help="commits to count, comma-separated")
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per commit")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="calls in flight (above 1, batches form and their size depends on timing)")
    parser.add_argument("--connections", type=int, default=1,
                        help="HTTP/2 connections the calls are spread over (perf_analyzer opens one per context)")
    parser.add_argument("--perf-analyzer", type=Path,
                        help="load with this perf_analyzer instead of a grpcio client (calls counted by statistics)")
    parser.add_argument("--warmup-s", type=float, default=30.0, help="with --perf-analyzer: before counting")
    parser.add_argument("--measure-s", type=float, default=40.0, help="with --perf-analyzer: counting")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches (callgrind's D1/LL miss counts per call; slower)")
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here (callgrind_annotate reads them)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    commits = [c.strip() for c in args.commits.split(",") if c.strip()]
    body = _request_body()
    with tempfile.TemporaryDirectory(prefix="infergate-instr-") as scratch:
        work = Path(scratch)
        repo = work / "repo"
        (repo / "mlp_small" / "1").mkdir(parents=True)
        (repo / "mlp_small" / "config.pbtxt").write_text(CONFIG_PBTXT)
        mlp_small(repo / "mlp_small" / "1" / "model.onnx")
        results = []
        try:
            for commit in commits:
                per_call, dump = measure(commit, args, work, repo, body)
                results.append((commit, per_call))
                print(f"{commit}: {per_call:,.0f} instructions per call", flush=True)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(dump, args.keep / f"callgrind.{commit}.out")
        finally:
            for commit in commits:
                if (work / f"tree-{commit}").exists():
                    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force",
                                    str(work / f"tree-{commit}")], capture_output=True)
    base = results[0][1]
    print(f"\n| commit | instructions per call | vs {results[0][0]} |\n|---|---|---|")
    for commit, per_call in results:
        print(f"| {commit} | {per_call:,.0f} | {per_call / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
