"""Long fuzzing runs against a real server, with the strategies of tests/server/test_fuzz.py.

    python -m infergate.bench.fuzz --cases 100000 --target frames --out bench/results/security-2026-12-01/
    python -m infergate.bench.fuzz --cases 100000 --target bodies --out bench/results/security-2026-12-01/

starts its own `infergate serve` (or uses --address), runs at most --cases cases for at most
--max-seconds, and writes fuzz-<target>.json and fuzz-<target>.md: cases run, the distinct
outcomes and their counts, crashes, hangs and property violations (each with its case, in
findings), server RSS and CPU at start and end, the host's load, the command and the commit.
A crashed server is restarted and the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import grpc

try:
    import hypothesis  # noqa: F401  (the bench extra; h2fuzz builds its strategies at import)
except ModuleNotFoundError:
    if __name__ == "__main__":  # the command, not a test importing it: one line, not a traceback
        print("python -m infergate.bench.fuzz: hypothesis is not installed; pip install 'infergate[bench]'",
              file=sys.stderr)
        sys.exit(2)
    raise
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from infergate.bench import h2fuzz

logger = logging.getLogger(__name__)

TARGETS = ("frames", "bodies")
MAX_FINDINGS_KEPT = 50  # findings written in full; the rest are only counted


class TimeUp(Exception):
    """--max-seconds passed: ends the hypothesis run."""


class Run:
    """One fuzzing run: drives the cases, keeps the counts and the findings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = None if args.address else h2fuzz.start_server()
        self.address = args.address or self.server.address  # type: ignore[union-attr]
        self.pid = args.pid or (self.server.pid if self.server else None)
        self.started = time.monotonic()
        self.deadline = self.started + args.max_seconds
        self.cases = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.counts = {"crashes": 0, "hangs": 0, "violations": 0, "normal_call_failures": 0, "restarts": 0}
        self.findings: list[dict[str, Any]] = []
        self.channel = grpc.insecure_channel(self.address)
        self.rss_start = h2fuzz.rss_bytes(self.pid) if self.pid else None
        self.cpu_start = h2fuzz.cpu_s(self.pid) if self.pid else None

    def one(self, case: Any) -> None:
        if time.monotonic() > self.deadline:
            raise TimeUp
        self.cases += 1
        if self.args.target == "frames":
            outcome = h2fuzz.run_frames_case(self.address, h2fuzz.render(case))
            self.outcomes.update(set(outcome.labels()))
            self.kinds.update(op.kind for op in case)
            if outcome.is_hung:
                self.counts["hangs"] += 1
                self._finding("hang", case, "the server neither answered nor closed within the bound")
        else:
            kind, body = case
            self.kinds[kind] += 1
            answer = h2fuzz.call_infer(self.channel, body, self.args.case_timeout_s)
            self.outcomes[answer.label()] += 1
            if (why := answer.violation()) is not None:
                self.counts["hangs" if answer.code == "DEADLINE_EXCEEDED" else "violations"] += 1
                self._finding("bad status", body, why)
        self._check_server(case)

    def _check_server(self, case: Any) -> None:
        if self.server is not None and not self.server.is_alive():
            self.counts["crashes"] += 1
            self._finding("crash", case, "".join(self.server.log[-20:]))
            self.server.stop()
            self.server = h2fuzz.start_server()
            self.address, self.pid = self.server.address, self.server.pid
            self.channel.close()
            self.channel = grpc.insecure_channel(self.address)
            self.counts["restarts"] += 1
            return
        if self.cases % self.args.check_every == 0:
            error = h2fuzz.normal_infer_error(self.address, seed=self.cases)
            if error is not None:
                self.counts["normal_call_failures"] += 1
                self._finding("normal call failed", case, error)

    def _finding(self, kind: str, case: Any, detail: str) -> None:
        if len(self.findings) < MAX_FINDINGS_KEPT:
            body = case.hex() if isinstance(case, bytes) else repr(case)
            self.findings.append({"kind": kind, "case_number": self.cases, "case": body, "detail": detail[-2000:]})
        logger.warning("case %d: %s: %s", self.cases, kind, detail[-300:])

    def summary(self, stopped_by: str) -> dict[str, Any]:
        """The run's record; stops the server this run started, after sampling its memory and CPU."""
        rss_end = h2fuzz.rss_bytes(self.pid) if self.pid else None
        cpu_end = h2fuzz.cpu_s(self.pid) if self.pid else None
        code = self.server.stop() if self.server is not None else None
        self.channel.close()
        return {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m infergate.bench.fuzz " + shlex.join(sys.argv[1:]),
            "target": self.args.target, "seed": self.args.seed, "cases_asked": self.args.cases,
            "cases_run": self.cases, "elapsed_s": round(time.monotonic() - self.started, 1), "stopped_by": stopped_by,
            **self.counts, "server_exit_code_on_sigterm": code,
            "server_rss_mib": {"start": _mib(self.rss_start), "end": _mib(rss_end)},
            "server_cpu_s": {"start": self.cpu_start, "end": cpu_end},
            "host": {"at_start": self.args.load_at_start, "at_end": h2fuzz.host_load(),
                     "note": "2 cores shared with other engineers' test runs; timings are not benchmarks"},
            **h2fuzz.code_identity(self.args.code_note),
            "case_kinds": dict(self.kinds.most_common()),
            "outcomes": dict(self.outcomes.most_common()),
            "findings": self.findings,
        }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def strategy(target: str) -> st.SearchStrategy[Any]:
    if target == "frames":
        return h2fuzz.frame_cases
    return st.one_of(h2fuzz.infer_requests().map(lambda body: ("built", body)),
                     h2fuzz.mutated_requests.map(lambda body: ("mutated", body)))


def fuzz(run: Run) -> str:
    """Runs the cases; returns what stopped the run."""
    @seed(run.args.seed)
    @settings(max_examples=run.args.cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy(run.args.target))
    def each(case: Any) -> None:
        run.one(case)

    try:
        each()
    except TimeUp:
        return "--max-seconds"
    return "--cases (or hypothesis ran out of distinct cases)"


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Fuzz run: {doc['target']} ({doc['date']})", "", f"    {doc['command']}", "",
             f"Commit `{doc['git_commit'][:10]}` ({doc['server_files_changed_since_commit']} files under server/ "
             f"changed since; server code from `{doc['server_code']}`). {doc['code_note']}", "",
             "| cases run | elapsed s | stopped by | crashes | hangs | violations | normal call failures | "
             "RSS MiB start / end | server CPU s |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {doc['cases_run']:,} | {doc['elapsed_s']} | {doc['stopped_by']} | {doc['crashes']} | {doc['hangs']} "
             f"| {doc['violations']} | {doc['normal_call_failures']} | {doc['server_rss_mib']['start']} / "
             f"{doc['server_rss_mib']['end']} | {_cpu(doc['server_cpu_s'])} |", "",
             f"Host: load {doc['host']['at_start']['loadavg']} at start, {doc['host']['at_end']['loadavg']} at end, "
             f"{doc['host']['at_start']['nproc']} CPUs; {doc['host']['note']}. Exit code on SIGTERM: "
             f"{doc['server_exit_code_on_sigterm']}.", "",
             "## Outcomes (a case counts once per distinct outcome it produced)", "",
             "| outcome | cases |", "|---|---|"]
    lines += [f"| {label.replace('|', '/')} | {count:,} |" for label, count in list(doc["outcomes"].items())[:60]]
    lines += ["", "## Steps generated", "", ", ".join(f"{k}: {v:,}" for k, v in doc["case_kinds"].items()), ""]
    if doc["findings"]:
        lines += ["## Findings", ""]
        lines += [f"- case {f['case_number']}: **{f['kind']}**: {f['detail'][:300]}\n  `{f['case'][:400]}`"
                  for f in doc["findings"]]
    return "\n".join(lines) + "\n"


def _cpu(cpu: dict[str, float | None]) -> str:
    if cpu["start"] is None or cpu["end"] is None:
        return "-"
    return f"{cpu['end'] - cpu['start']:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="at most this many cases")
    parser.add_argument("--target", choices=TARGETS, default="frames",
                        help="frames: HTTP/2 frame sequences on raw sockets; bodies: ModelInferRequest bodies "
                             "(built and mutated) through grpcio")
    parser.add_argument("--out", type=Path, required=True, help="folder for fuzz-<target>.json and .md")
    parser.add_argument("--address", help="fuzz this server instead of starting one (then RSS needs --pid)")
    parser.add_argument("--pid", type=int, help="with --address: the server's pid, for RSS and CPU")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=20261201, help="hypothesis seed (runs are reproducible)")
    parser.add_argument("--check-every", type=int, default=1,
                        help="a normal ModelInfer on a fresh connection after every Nth case")
    parser.add_argument("--case-timeout-s", type=float, default=h2fuzz.NORMAL_TIMEOUT_S,
                        help="bodies: a call not answered in this long is a hang")
    parser.add_argument("--code-note", default="", help="where the server code came from, for the record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.load_at_start = h2fuzz.host_load()
    run = Run(args)
    try:
        stopped_by = fuzz(run)
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    doc = run.summary(stopped_by)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"fuzz-{args.target}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"fuzz-{args.target}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 1 if doc["crashes"] or doc["hangs"] or doc["violations"] or doc["normal_call_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
