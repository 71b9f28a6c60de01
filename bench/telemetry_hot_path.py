"""Telemetry's cost on the request path alone: CPU per ModelInfer in process, without gRPC transport noise."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from infergate.bench.telemetry_overhead import WORK, build_repository  # the same mlp_small repository
from infergate.proto import grpc_service_pb2 as pb
from infergate.server.app import InferenceServer, ServerOptions
from infergate.server.telemetry.options import TelemetryOptions

CONCURRENCY = 16  # coroutines calling ModelInfer at once, as perf_analyzer's c=16
VARIANTS = {
    "off": TelemetryOptions(is_enabled=False),
    "defaults": TelemetryOptions(),
    "trace-1pct": TelemetryOptions(trace_exporter="console", trace_sampling_ratio=0.01),
}


class _Context:
    """The two grpc.aio context calls ModelInfer makes."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-c++/1.0"),)


async def cpu_us_per_request(repo: Path, options: TelemetryOptions, requests: int, repeats: int) -> float:
    """The least CPU time per request over `repeats` runs of `requests` requests, us."""
    server = InferenceServer(ServerOptions(model_repository=repo, grpc_address="127.0.0.1:0", metrics_address=None,
                                           telemetry=options))
    await server.start()
    request = pb.ModelInferRequest(model_name="mlp_small")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    context: Any = _Context()

    async def client() -> None:
        for _ in range(requests // CONCURRENCY):
            await server.service.ModelInfer(request, context)

    best_us = float("inf")
    try:
        for _ in range(repeats + 1):  # the first run warms up
            start_s = time.process_time()
            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            best_us = min(best_us, (time.process_time() - start_s) / requests * 1e6)
    finally:
        await server.stop()
    return best_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--requests", type=int, default=4800)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    repo = build_repository(args.work)
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the console span exporter
        for _ in range(args.rounds):
            for name, options in VARIANTS.items():
                results[name].append(asyncio.run(cpu_us_per_request(repo, options, args.requests, args.repeats)))
    base = min(results["off"])
    for name, values in results.items():
        print(f"{name:>10}: {min(values):.1f} us CPU per request (best of {args.rounds} x {args.repeats}; "
              f"all: {', '.join(f'{v:.1f}' for v in values)}); {min(values) - base:+.1f} us vs off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
