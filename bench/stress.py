"""Overload and SIGTERM-under-load runs against a real `infergate serve`, every request id accounted for.

    python -m infergate.bench.stress --out bench/results/reliability-2026-12-02/overload
    python -m infergate.bench.stress --mode sigterm --out bench/results/reliability-2026-12-02/sigterm

overload: builds the stress model's repository (stress_model: ~8 ms of compute a row, batches of 4, a queue of 2),
starts the server, measures its capacity (closed-loop saturation, correct answers a second), then offers
open-loop Poisson load at each --loads multiple of it (default 0.5x and 3x). Each request has its own id, its own
row and a gRPC deadline; each id ends in exactly one class: correct (its own id back and the numpy reference's
output), RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, or other (a failure), and none may be lost, duplicated or mixed
up. ModelStatistics before and after each phase must show exactly the correct answers computed and counted as
successes: a refused or expired request was never run. The admitted P99 at the highest load over that at the
lowest must stay within --max-p99-ratio.

sigterm: the same server with --exit-timeout-s and a longer queue (32, so the drain has work for a while),
open-loop load at --sigterm-load x capacity (1.5: the queue is full when the signal comes), and a SIGTERM half
way: every request admitted before it must be answered correctly (RESOURCE_EXHAUSTED ones were never admitted),
the rest UNAVAILABLE (refused while draining, or the port closed after the exit), the exit status 0 and the exit
within the grace.

Writes <out>/<mode>.json, <mode>.png and the server's log, prints a table, and exits 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from infergate.bench.stress_accounting import p99_ratio
from infergate.bench.stress_client import OK
from infergate.bench.stress_model import (
    MAX_BATCH_SIZE,
    MAX_QUEUE_SIZE,
    TRIPS,
    build_repository,
    config_text,
    saturating_clients,
)
from infergate.bench.stress_phases import PhaseResult, capacity, open_rate
from infergate.bench.stress_plots import overload_plot, sigterm_plot
from infergate.bench.stress_report import overload_table, sigterm_table
from infergate.bench.stress_server import Server, serve_and_run
from infergate.server.draining import DRAINING_MESSAGE

logger = logging.getLogger(__name__)

OVERLOAD_CLASSES = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")  # what an overloaded server may answer instead
SIGTERM_CLASSES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")  # ... a draining one (and a momentarily full queue)
# A request sent this shortly before the SIGTERM may reach the server's handler after its drain began and be
# refused, rightly: the signal is delivered at once, the request's frames take a loop iteration or two to read.
SIGNAL_MARGIN_MS = 50.0
EXIT_SLACK_S = 5.0  # beyond the grace, how long to wait for the exit before calling it a failure
SIGTERM_QUEUE_SIZE = 32  # sigterm: 8 full batches (~250 ms of work) queued at the signal, for the drain to finish
TIMELINE_MS = (-100.0, 400.0)  # sigterm: the requests sent this close to the signal are listed one by one


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("overload", "sigterm"), default="overload")
    parser.add_argument("--out", type=Path, required=True, help="folder for <mode>.json and server.log")
    parser.add_argument("--capacity-s", type=float, default=5.0, help="closed-loop capacity run, its first second "
                        "not counted (default 5)")
    parser.add_argument("--duration-s", type=float, default=10.0, help="each open-loop phase (default 10)")
    parser.add_argument("--loads", default="0.5,3", help="multiples of the measured capacity to offer, comma "
                        "separated (default 0.5,3)")
    parser.add_argument("--deadline-ms", type=float, default=2000.0, help="each request's gRPC timeout (default "
                        "2000: far above the bounded queue's wait, so refusals come from the server's limits)")
    parser.add_argument("--max-p99-ratio", type=float, default=3.0, help="admitted P99 at the highest load over the "
                        "lowest must not exceed this (default 3)")
    parser.add_argument("--concurrency", type=int, default=0, help="closed-loop clients; default: a batch running "
                        "and one queued, so none is refused (stress_model.saturating_clients)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument("--max-queue-size", type=int, default=None, help="the model's "
                        f"default_queue_policy.max_queue_size; 0: unbounded (default {MAX_QUEUE_SIZE}; sigterm "
                        f"{SIGTERM_QUEUE_SIZE})")
    parser.add_argument("--trips", type=int, default=TRIPS, help="the model's Loop trips, its cost (default "
                        "%(default)s: ~8 ms a row)")
    parser.add_argument("--serve-args", default="", help="more `infergate serve` flags, one string, e.g. "
                        "'--workers 2' or '--max-inflight-requests 16'")
    parser.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--channels", type=int, default=2, help="TCP connections a client process opens")
    parser.add_argument("--grace-s", type=float, default=10.0, help="sigterm: --exit-timeout-s (default 10)")
    parser.add_argument("--sigterm-load", type=float, default=1.5, help="sigterm: offered load, x capacity "
                        "(default 1.5)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.loads = sorted(float(x) for x in args.loads.split(",") if x.strip())
    if not args.loads or min(args.loads) <= 0:
        parser.error(f"--loads {args.loads}: expected positive multiples, e.g. 0.5,3")
    if args.max_queue_size is None:
        args.max_queue_size = SIGTERM_QUEUE_SIZE if args.mode == "sigterm" else MAX_QUEUE_SIZE
    if args.concurrency <= 0:
        args.concurrency = saturating_clients(args.max_batch_size, min(args.max_queue_size, MAX_QUEUE_SIZE))
    return args


def run_overload(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    deadline_s = args.deadline_ms / 1e3
    measured = capacity(server, args.concurrency, args.capacity_s, deadline_s, args.seed, OVERLOAD_CLASSES,
                        args.processes, args.channels)
    logger.info("capacity: %.1f correct answers/s (closed loop, %d clients)", measured.throughput_per_s,
                args.concurrency)
    phases = [measured]
    if measured.throughput_per_s <= 0:
        return overload_report(args, server, phases, ["capacity: no correct answers in the closed loop"])
    for k, multiple in enumerate(args.loads):
        rate = multiple * measured.throughput_per_s
        phases.append(open_rate(server, f"load{multiple:g}x", rate, args.duration_s, deadline_s,
                                args.seed + 10 + k, OVERLOAD_CLASSES, args.processes, args.channels))
        logger.info("%gx (%.0f/s): %s", multiple, rate, phases[-1].accounting.counts)
    return overload_report(args, server, phases, [])


def overload_report(args: argparse.Namespace, server: Server, phases: list[PhaseResult],
                    problems: list[str]) -> dict[str, Any]:
    problems = problems + [p for phase in phases for p in phase.problems]
    ratio = None
    if len(phases) >= 3:
        light, heavy = phases[1], phases[-1]
        ratio = p99_ratio(heavy.describe()["latency_ms"], light.describe()["latency_ms"])
        if ratio is None:
            problems.append(f"no P99 to compare: {light.name} or {heavy.name} has no correct answers")
        elif ratio > args.max_p99_ratio:
            problems.append(f"admitted P99 at {heavy.name} is {ratio:g}x that at {light.name} "
                            f"(at most {args.max_p99_ratio:g}x)")
    return {"kind": "overload", "capacity_per_s": phases[0].throughput_per_s, "p99_ratio": ratio,
            "max_p99_ratio": args.max_p99_ratio, "phases": [p.describe() for p in phases],
            "verdict": {"passed": not problems, "problems": problems}}


def run_sigterm(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    deadline_s = args.deadline_ms / 1e3
    measured = capacity(server, args.concurrency, args.capacity_s, deadline_s, args.seed, OVERLOAD_CLASSES,
                        args.processes, args.channels)
    rate = args.sigterm_load * measured.throughput_per_s
    exited: dict[str, float] = {}
    signalled: dict[str, float] = {}

    def wait_exit() -> None:
        server.process.wait()
        exited["at_ns"] = time.monotonic_ns()

    watcher = threading.Thread(target=wait_exit, daemon=True)
    watcher.start()

    def send_sigterm() -> None:
        signalled["at_ns"] = time.monotonic_ns()
        server.signal(signal.SIGTERM)

    phase = open_rate(server, "sigterm", rate, args.duration_s, deadline_s, args.seed + 20, SIGTERM_CLASSES,
                      args.processes, args.channels, action=(args.duration_s / 2, send_sigterm),
                      with_statistics=False)
    watcher.join(args.grace_s + EXIT_SLACK_S)
    return sigterm_report(args, server, measured, phase, signalled.get("at_ns"), exited.get("at_ns"))


def sigterm_report(args: argparse.Namespace, server: Server, measured: PhaseResult, phase: PhaseResult,
                   signalled_ns: float | None, exited_ns: float | None) -> dict[str, Any]:
    problems = list(measured.problems) + list(phase.problems)
    code = server.process.poll()
    exit_s = (exited_ns - signalled_ns) / 1e9 if exited_ns is not None and signalled_ns is not None else None
    if code != 0:
        problems.append(f"exit status {code}, expected 0")
    if exit_s is None or exit_s > args.grace_s:
        problems.append(f"exit {exit_s} s after SIGTERM, expected within the grace of {args.grace_s:g} s")
    sig = signalled_ns or 0
    before = [o for o in phase.outcomes if o.sent_ns < sig - SIGNAL_MARGIN_MS * 1e6]
    # Refused by the full queue is not admitted; anything else sent well before the signal must be answered.
    unanswered = [o for o in before if o.code not in (OK, "RESOURCE_EXHAUSTED")]
    if unanswered:
        problems.append(f"{len(unanswered)} requests sent over {SIGNAL_MARGIN_MS:g} ms before the SIGTERM were "
                        f"not answered: {sorted({o.code for o in unanswered})}")
    unavailable = [o for o in phase.outcomes if o.code == "UNAVAILABLE"]
    draining = sum(1 for o in unavailable if o.detail == DRAINING_MESSAGE)
    drained = [o for o in phase.outcomes if o.code == OK and o.sent_ns < sig < o.done_ns]
    return {"kind": "sigterm", "capacity_per_s": measured.throughput_per_s, "grace_s": args.grace_s,
            "exit_status": code, "sigterm_to_exit_s": round(exit_s, 3) if exit_s is not None else None,
            "sent_before_sigterm": sum(1 for o in phase.outcomes if o.sent_ns < sig),
            "in_flight_at_sigterm_answered": len(drained),
            "answered_sent_after_sigterm": sum(1 for o in phase.outcomes if o.sent_ns >= sig and o.code == OK),
            "unavailable_draining": draining, "unavailable_port_closed": len(unavailable) - draining,
            "first_unavailable_sent_ms_after_sigterm": _ms(min((o.sent_ns - sig for o in unavailable), default=None)),
            "last_answer_done_ms_after_sigterm": _ms(max((o.done_ns - sig for o in phase.outcomes if o.code == OK),
                                                         default=None)),
            "timeline_ms": timeline(phase, sig), "phases": [measured.describe(), phase.describe()],
            "verdict": {"passed": not problems, "problems": problems}}


def _ms(ns: float | None) -> float | None:
    return round(ns / 1e6, 3) if ns is not None else None


def timeline(phase: PhaseResult, signalled_ns: float) -> list[list[object]]:
    """[sent ms, done ms, class] after the signal of each request sent within TIMELINE_MS of it, in send order."""
    low, high = (signalled_ns + t * 1e6 for t in TIMELINE_MS)
    rows = sorted((o.sent_ns, o) for o in phase.outcomes if low <= o.sent_ns <= high)
    return [[_ms(o.sent_ns - signalled_ns), _ms(o.done_ns - signalled_ns),
             "correct" if o.code == OK else o.code] for _, o in rows]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    flags = ("--exit-timeout-s", f"{args.grace_s:g}") if args.mode == "sigterm" else ()
    report = serve_and_run(
        "infergate.bench.stress", argv, args.out / "server.log",
        lambda work: build_repository(work / "repository", args.trips, args.max_batch_size, args.max_queue_size),
        [*flags, *shlex.split(args.serve_args)],
        lambda server: (run_overload if args.mode == "overload" else run_sigterm)(args, server))
    report.update({"model_config": config_text(args.max_batch_size, args.max_queue_size), "trips": args.trips,
                   "deadline_ms": args.deadline_ms, "client_processes": args.processes})
    (args.out / f"{args.mode}.json").write_text(json.dumps(report, indent=2) + "\n")
    (overload_plot if args.mode == "overload" else sigterm_plot)(report, args.out / f"{args.mode}.png")
    print(overload_table(report) if args.mode == "overload" else sigterm_table(report))
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
