"""Soak: a real `infergate serve` at steady load for a bounded time, sampled for leaks and errors.

    python -m infergate.bench.soak --out bench/results/reliability-2026-12-02/soak --duration-s 600

Builds the stress model's repository (stress_model; an unbounded queue, so a Poisson burst at half load waits
instead of being refused), starts the server, measures its capacity (closed loop, as bench/stress does) and
offers open-loop Poisson load at --load x capacity (default 0.5) for --duration-s, every request with its own id,
a row from a pool of POOL_ROWS whose reference outputs are known, and a gRPC deadline. Every --sample-every-s it
reads the server's RSS and open fds from /proc (summed over its processes: --workers' front ends too), then
/metrics (infergate_event_loop_tasks, infergate_in_flight_requests, process_resident_memory_bytes,
process_open_fds; a gauge the server lacks is recorded as missing), and the client's window: answers, errors by
class, P50/P99 of the correct ones. One sample idle before the load and one after it bracket the run.

Verdict (soak_verdict): no error at all, every id answered once and right, ModelStatistics deltas equal to the
correct answers, RSS growth under 5 % from the first sample after the warm-up (the first 10 % of the load) to
the last, fds and tasks beyond the calls in flight flat within a slack of 1 and 2 (why: soak_verdict).
Writes soak.json, samples.csv, soak.png and server.log to --out; exits 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from infergate.bench.loadgen.stats import percentiles_ms, poisson_schedule
from infergate.bench.soak_report import plot, sample_rows, summary_text, write_csv
from infergate.bench.soak_verdict import IDLE_AFTER, IDLE_BEFORE, LOAD, Sample, verdict, warmup_s
from infergate.bench.stress_accounting import (
    CORRECT,
    account,
    accounting_problems,
    classify,
    statistics_delta,
    statistics_problems,
    summary,
)
from infergate.bench.stress_client import PhaseSpec, Recorder, channels, connect, open_loop, request_id
from infergate.bench.stress_model import MAX_BATCH_SIZE, TRIPS, build_repository, config_text, inputs, reference
from infergate.bench.stress_phases import capacity, settled_statistics
from infergate.bench.stress_server import Server, open_fds, rss_bytes, serve_and_run

logger = logging.getLogger(__name__)

POOL_ROWS = 512  # distinct rows the requests cycle through: neighbours in time never share one
START_SLACK_S = 0.5  # from the idle sample to the first send
IDLE_SETTLE_S = 1.0  # after the last answer, before the idle sample: a batch whose caller gave up may still run
TASKS, IN_FLIGHT = "infergate_event_loop_tasks", "infergate_in_flight_requests"
METRICS = (TASKS, IN_FLIGHT, "process_resident_memory_bytes", "process_open_fds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, default=600.0, help="the load's length (default 600)")
    parser.add_argument("--sample-every-s", type=float, default=5.0, help="default 5")
    parser.add_argument("--load", type=float, default=0.5, help="offered load, x the measured capacity (default 0.5)")
    parser.add_argument("--rate", type=float, default=0.0, help="offered requests/s instead (skips the capacity run)")
    parser.add_argument("--capacity-s", type=float, default=5.0, help="closed-loop capacity run (default 5)")
    parser.add_argument("--deadline-ms", type=float, default=2000.0)
    parser.add_argument("--max-queue-size", type=int, default=0, help="0: unbounded (default)")
    parser.add_argument("--trips", type=int, default=TRIPS)
    parser.add_argument("--serve-args", default="", help="more `infergate serve` flags, one string")
    parser.add_argument("--seed", type=int, default=5)
    return parser.parse_args(argv)


def probe(server: Server) -> dict[str, Any]:
    """The server's processes from /proc (read first: the scrape's own connection must not count), then /metrics."""
    pids = server.tree()
    rss = [rss_bytes(pid) for pid in pids]
    fds = [open_fds(pid) for pid in pids]
    try:
        scraped = server.scrape(METRICS)
    except OSError as exc:
        logger.warning("metrics scrape failed: %s", exc)
        scraped = {}
    return {"rss_bytes": sum(r for r in rss if r is not None) if any(r is not None for r in rss) else None,
            "rss_main_bytes": rss_bytes(server.pid), "fds": sum(f for f in fds if f is not None)
            if any(f is not None for f in fds) else None, "processes": len(pids),
            "tasks": scraped.get(TASKS), "in_flight": scraped.get(IN_FLIGHT),
            "metrics_rss_bytes": scraped.get("process_resident_memory_bytes"),
            "metrics_fds": scraped.get("process_open_fds")}


def window(recorder: Recorder, seen: int, expected: np.ndarray, t_s: float, phase: str, period_s: float,
           probed: dict[str, Any]) -> Sample:
    """A sample of the probe and of the outcomes completed since the last one (recorder.outcomes[seen:])."""
    new = recorder.outcomes[seen:]
    classes = [classify(o, expected, ()) for o in new]
    latencies = np.array([o.done_ns - o.scheduled_ns for o, c in zip(new, classes) if c == CORRECT], np.int64)
    errors: dict[str, int] = {}
    for c in classes:
        if c != CORRECT:
            errors[c] = errors.get(c, 0) + 1
    pct = percentiles_ms(latencies)
    correct = int(latencies.size)
    return Sample(round(t_s, 3), phase, **probed, sent=recorder.sent, answered=len(new), correct=correct,
                  errors=errors, p50_ms=pct["p50"], p99_ms=pct["p99"],
                  throughput_per_s=round(correct / period_s, 2) if period_s > 0 else 0.0)


async def soak(server: Server, spec: PhaseSpec, expected: np.ndarray, duration_s: float,
               period_s: float) -> tuple[list[Sample], Recorder]:
    """Runs the open loop and samples every `period_s`, plus one sample idle before and one after."""
    recorder = Recorder()
    opened = channels(spec.target, spec.channels)
    samples: list[Sample] = []
    seen = 0
    try:
        calls = await connect(opened)
        samples.append(window(recorder, 0, expected, -START_SLACK_S, IDLE_BEFORE, 0.0,
                              await asyncio.to_thread(probe, server)))
        start_ns = time.monotonic_ns() + int(START_SLACK_S * 1e9)
        spec = PhaseSpec(**{**spec.__dict__, "start_ns": start_ns})
        load = asyncio.ensure_future(open_loop(calls, spec, recorder))
        k = 1
        while not load.done():
            due_ns = start_ns + int(k * period_s * 1e9)
            await asyncio.wait([load], timeout=max((due_ns - time.monotonic_ns()) / 1e9, 0))
            if load.done() and time.monotonic_ns() < due_ns:
                break  # the last answers came before the next sample: the idle one follows
            probed = await asyncio.to_thread(probe, server)
            samples.append(window(recorder, seen, expected, (due_ns - start_ns) / 1e9, LOAD, period_s, probed))
            seen = len(recorder.outcomes)
            k += 1
        await load
        await asyncio.sleep(IDLE_SETTLE_S)
        probed = await asyncio.to_thread(probe, server)
        samples.append(window(recorder, seen, expected, (time.monotonic_ns() - start_ns) / 1e9, IDLE_AFTER,
                              period_s, probed))
    finally:
        for channel in opened:
            await channel.close()
    logger.info("soak: %d requests sent, %d outcomes, %d samples", recorder.sent, len(recorder.outcomes),
                len(samples))
    return samples, recorder


def run(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    deadline_s = args.deadline_ms / 1e3
    measured = None
    if args.rate > 0:
        rate = args.rate
    else:
        clients = 2 * MAX_BATCH_SIZE  # with an unbounded queue: a batch running and one waiting
        measured = capacity(server, clients, args.capacity_s, deadline_s, args.seed, ())
        rate = args.load * measured.throughput_per_s
    rows = inputs(POOL_ROWS, args.seed)
    expected = reference(rows)
    count = max(1, int(round(rate * args.duration_s)))
    offsets = poisson_schedule(count, args.duration_s, np.random.default_rng([args.seed, 2]))
    spec = PhaseSpec("soak", server.address, rows, 0, deadline_s, offsets_ns=offsets)
    logger.info("soak: %.1f requests/s for %g s, a sample every %g s", rate, args.duration_s, args.sample_every_s)
    before = settled_statistics(server)
    samples, recorder = asyncio.run(soak(server, spec, expected, args.duration_s, args.sample_every_s))
    after = settled_statistics(server)
    accounting = account(recorder.outcomes, (request_id("soak", k) for k in range(count)), expected, ())
    delta = statistics_delta(before, after)
    failures = accounting_problems("soak", accounting) + statistics_problems(delta, accounting)
    if measured is not None:
        failures += measured.problems
    errors = {c: n for c, n in accounting.counts.items() if c != CORRECT and n}
    return {"kind": "soak", "duration_s": args.duration_s, "sample_every_s": args.sample_every_s,
            "load": args.load if measured is not None else None, "rate_per_s": round(rate, 2),
            "capacity_per_s": measured.throughput_per_s if measured is not None else None,
            "capacity_phase": measured.describe() if measured is not None else None,
            "accounting": summary(accounting), "server_statistics_delta": delta,
            "verdict": verdict(samples, args.duration_s, errors, failures), "samples": sample_rows(samples),
            "_samples": samples}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = serve_and_run(
        "infergate.bench.soak", argv, args.out / "server.log",
        lambda work: build_repository(work / "repository", args.trips, max_queue_size=args.max_queue_size),
        shlex.split(args.serve_args), lambda server: run(args, server))
    samples: list[Sample] = report.pop("_samples")
    report.update({"model_config": config_text(max_queue_size=args.max_queue_size), "trips": args.trips,
                   "deadline_ms": args.deadline_ms})
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    write_csv(samples, args.out / "samples.csv")
    plot(samples, warmup_s(args.duration_s), args.out / "soak.png",
         f"soak {args.duration_s:g} s at {report['rate_per_s']:.0f}/s: "
         + ("PASSED" if report["verdict"]["passed"] else "FAILED"))
    print(summary_text(report))
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
