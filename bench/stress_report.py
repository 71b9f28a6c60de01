"""The stress runs' printed tables: one row a phase, its classes, failures, latency and the server's counters."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

COLUMNS = ("phase", "load", "sent", "correct", "RES_EXH", "DEADLINE", "UNAVAIL", "other", "lost", "dup", "mixed",
           "ok/s", "P50 ms", "P95 ms", "P99 ms", "lag99 ms", "rows computed", "successes")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def _table(rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[_cell(v) for v in row] for row in [COLUMNS, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]


def phase_row(phase: dict[str, Any]) -> list[object]:
    counts, latency, delta = phase["counts"], phase["latency_ms"], phase["server_statistics_delta"] or {}
    load = f"c={phase['load']:g}" if phase["mode"] == "closed" else f"{phase['load']:.0f}/s"
    return [phase["phase"], load, phase["sent"], counts["correct"], counts["RESOURCE_EXHAUSTED"],
            counts["DEADLINE_EXCEEDED"], counts["UNAVAILABLE"], phase["other"], phase["lost"], phase["duplicated"],
            phase["mixed_up"], phase["throughput_per_s"], latency["p50"], latency["p95"], latency["p99"],
            phase["send_lag_p99_ms"], delta.get("inference_count"), delta.get("success_count")]


def _verdict(report: dict[str, Any]) -> list[str]:
    verdict = report["verdict"]
    return ["verdict: " + ("PASSED" if verdict["passed"] else "FAILED")] + [f"  - {p}" for p in verdict["problems"]]


def _details(report: dict[str, Any]) -> list[str]:
    lines = []
    for phase in report["phases"]:
        for detail, count in phase["details"].items():
            lines.append(f"  {phase['phase']}: {count} x {detail}")
    return ["status messages (numbers folded to N):", *lines] if lines else []


def overload_table(report: dict[str, Any]) -> str:
    lines = _table([phase_row(p) for p in report["phases"]])
    lines += [f"capacity {report['capacity_per_s']:.1f} correct answers/s; admitted P99 ratio (highest load / "
              f"lowest) {_cell(report['p99_ratio'])} (at most {report['max_p99_ratio']:g})", *_details(report),
              *_verdict(report)]
    return "\n".join(lines)


def sigterm_table(report: dict[str, Any]) -> str:
    lines = _table([phase_row(p) for p in report["phases"]])
    lines += [f"SIGTERM -> exit {_cell(report['sigterm_to_exit_s'])} s (grace {report['grace_s']:g} s), exit status "
              f"{report['exit_status']}; {report['in_flight_at_sigterm_answered']} in flight at the signal answered, "
              f"the last {_cell(report['last_answer_done_ms_after_sigterm'])} ms after it; UNAVAILABLE: "
              f"{report['unavailable_draining']} refused while draining, {report['unavailable_port_closed']} after the "
              f"port closed, the first sent {_cell(report['first_unavailable_sent_ms_after_sigterm'])} ms after it",
              *_details(report), *_verdict(report)]
    return "\n".join(lines)
