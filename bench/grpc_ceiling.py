"""The per-call cost of a gRPC transport alone: servers that answer ModelInfer with a fixed response.

Each variant serves the metadata perf_analyzer asks for and a constant ModelInferResponse, so the
measured rate is the transport's ceiling with no decoding, batching or inference behind it:

    python bench/grpc_ceiling.py --out bench/results/<folder>    # every variant, c=16, perf_analyzer

prints (and writes to <folder>/ceiling.md) calls/s and the server's CPU per call for grpc.aio,
grpc.aio on uvloop, the threaded grpc.server, and infergate's native HTTP/2 transport.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from infergate.bench.peer_kit import default_bench_cache

VARIANTS = ("aio", "aio-uvloop", "threaded", "native")
SERVICE = "inference.GRPCInferenceService"
MEASURE_S = 5.0  # CPU is sampled over this window, inside perf_analyzer's run


def _responses() -> dict[str, bytes]:
    from infergate.proto import grpc_service_pb2 as pb

    infer = pb.ModelInferResponse(model_name="mlp_small", model_version="1")
    infer.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    infer.raw_output_contents.append(bytes(40))
    metadata = pb.ModelMetadataResponse(name="mlp_small", versions=["1"], platform="onnxruntime_onnx")
    metadata.inputs.add(name="INPUT0", datatype="FP32", shape=[-1, 64])
    metadata.outputs.add(name="OUTPUT0", datatype="FP32", shape=[-1, 10])
    config = pb.ModelConfigResponse()
    config.config.name, config.config.platform, config.config.max_batch_size = "mlp_small", "onnxruntime_onnx", 64
    config.config.input.add(name="INPUT0", data_type=11, dims=[64])
    config.config.output.add(name="OUTPUT0", data_type=11, dims=[10])
    return {"ModelInfer": infer.SerializeToString(), "ModelMetadata": metadata.SerializeToString(),
            "ModelConfig": config.SerializeToString(), "ModelStatistics": b"",
            "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
            "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
            "ServerMetadata": pb.ServerMetadataResponse(name="ceiling", version="0").SerializeToString(),
            "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString()}


def serve(variant: str, port: int, serve_s: float) -> None:
    """Runs one fixed-response server for serve_s seconds."""
    import grpc

    responses = _responses()
    if variant == "threaded":
        handlers = {name: grpc.unary_unary_rpc_method_handler(lambda r, c, body=body: body)
                    for name, body in responses.items()}
        server = grpc.server(futures.ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        time.sleep(serve_s)
        return

    def fixed(body: bytes) -> Any:
        async def call(request: Any, context: Any) -> bytes:
            return body
        return call

    async def run_aio() -> None:
        server = grpc.aio.server()
        handlers = {name: grpc.unary_unary_rpc_method_handler(fixed(body)) for name, body in responses.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await asyncio.sleep(serve_s)

    async def run_native() -> None:
        from infergate.server.transports.native import Http2Server, Route

        routes = {f"/{SERVICE}/{name}".encode(): Route(unary=fixed(body)) for name, body in responses.items()}
        server = Http2Server(routes, 1 << 20)
        await server.start(f"127.0.0.1:{port}")
        await asyncio.sleep(serve_s)

    main = run_native() if variant == "native" else run_aio()
    if variant in ("aio-uvloop", "native"):
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def measure(variant: str, perf_analyzer: Path, port: int, concurrency: int) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", variant, "--port", str(port)])
    try:
        time.sleep(2.0)
        client = subprocess.Popen(["timeout", "60", str(perf_analyzer), "-i", "grpc", "-u", f"127.0.0.1:{port}",
                                   "-m", "mlp_small", "--concurrency-range", str(concurrency), "-p", "3000",
                                   "--max-trials", "10", "-s", "25"], stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        ticks, start = _cpu_ticks(server.pid), time.monotonic()
        time.sleep(MEASURE_S)
        cpu = (_cpu_ticks(server.pid) - ticks) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - start)
        output, _ = client.communicate()
    finally:
        server.kill()
        server.wait()
    rate = next((float(line.split("throughput:")[1].split()[0]) for line in output.splitlines()
                 if line.startswith(f"Concurrency: {concurrency}, throughput:")), 0.0)
    return {"variant": variant, "calls_per_s": rate, "server_cpu": cpu,
            "cpu_us_per_call": cpu / rate * 1e6 if rate else None, "perf_analyzer_tail": output[-400:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=18301)
    parser.add_argument("--serve-s", type=float, default=45.0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--perf-analyzer", type=Path,
                        default=default_bench_cache() / "perf_analyzer" / "perf_analyzer")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.serve_s)
        return 0
    lines = [f"# Transport ceiling: fixed ModelInfer responses, perf_analyzer c={args.concurrency}", "",
             f"Command: `python bench/grpc_ceiling.py --concurrency {args.concurrency}`", "",
             "| transport | calls/s | server CPU (1.0 = a core) | server CPU per call |", "|---|---|---|---|"]
    for variant in VARIANTS:
        result = measure(variant, args.perf_analyzer, args.port, args.concurrency)
        per_call = f"{result['cpu_us_per_call']:.0f} us" if result["cpu_us_per_call"] else "-"
        lines.append(f"| {variant} | {result['calls_per_s']:,.0f} | {result['server_cpu']:.2f} | {per_call} |")
        print(lines[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ceiling.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
