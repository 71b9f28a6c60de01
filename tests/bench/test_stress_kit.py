"""The stress and soak kit: its pure judgements on made-up outcomes and samples, then short real runs of
`bench/soak.py` and `bench/stress.py --mode sigterm`, their files and verdicts."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from infergate.bench.soak_verdict import IDLE_AFTER, IDLE_BEFORE, LOAD, Sample, verdict
from infergate.bench.stress_accounting import (
    CORRECT,
    MIXED_UP,
    OTHER,
    account,
    fold_detail,
    p99_ratio,
    statistics_problems,
)
from infergate.bench.stress_client import LOST, OK, Outcome
from infergate.bench.stress_model import N_OUT, inputs, reference
from infergate.bench.stress_server import gauges

from harness import EXTRA_SERVE_ARGS

RUN_TIMEOUT_S = 120  # each real run is bounded by its own flags; this only stops a hung one
REFUSALS = ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


def _outcome(k: int, code: str = OK, response_id: str | None = None, output: np.ndarray | None = None,
             row: int | None = None) -> Outcome:
    rid = f"p-{k}"
    return Outcome(k, rid, k if row is None else row, 0, 0, 1_000_000 * (k + 1), code,
                   response_id=(rid if response_id is None else response_id) if code == OK else None,
                   output=output)


def test_each_id_gets_one_class_and_every_failure_is_counted() -> None:
    expected = np.arange(6 * N_OUT, dtype=np.float32).reshape(6, N_OUT)
    outcomes = [
        _outcome(0, output=expected[0]),  # right
        _outcome(1, output=expected[0]),  # another row's answer
        _outcome(2, response_id="p-3", output=expected[2]),  # another request's id
        _outcome(3, code="RESOURCE_EXHAUSTED"),
        _outcome(4, code="INTERNAL"),  # not a refusal overload may answer
        _outcome(5, code=LOST),
        _outcome(3, code="DEADLINE_EXCEEDED"),  # a second outcome for p-3
    ]
    accounting = account(outcomes, [f"p-{k}" for k in range(7)], expected, REFUSALS)
    assert accounting.counts[CORRECT] == 1
    assert accounting.counts[MIXED_UP] == 2 and accounting.mixed_up == 2
    assert accounting.counts[OTHER] == 1 and accounting.other == 1
    assert accounting.lost == 2  # p-5 LOST, p-6 never answered at all
    assert accounting.duplicated == 1
    assert accounting.latencies_ns.tolist() == [1_000_000]


def test_a_clean_phase_has_no_failures_and_folds_its_messages() -> None:
    expected = np.ones((3, N_OUT), np.float32)
    outcomes = [_outcome(0, output=expected[0]), _outcome(1, code="RESOURCE_EXHAUSTED"),
                _outcome(2, code="DEADLINE_EXCEEDED")]
    outcomes[1].detail = "model 'stress' queue is full: 2 requests already waiting"
    accounting = account(outcomes, ["p-0", "p-1", "p-2"], expected, REFUSALS)
    assert accounting.failures == 0 and accounting.correct == 1
    assert accounting.details == {"RESOURCE_EXHAUSTED: model 'stress' queue is full: N requests already waiting": 1,
                                  "DEADLINE_EXCEEDED: ": 1}
    assert fold_detail("X", "waited 12.5 us of 3 us") == "X: waited N us of N us"
    assert p99_ratio({"p99": 30.0}, {"p99": 20.0}) == 1.5
    assert p99_ratio({"p99": 30.0}, {"p99": None}) is None


def test_statistics_show_a_computed_request_that_failed() -> None:
    expected = np.ones((2, N_OUT), np.float32)
    accounting = account([_outcome(0, output=expected[0]), _outcome(1, code="DEADLINE_EXCEEDED")], ["p-0", "p-1"],
                         expected, REFUSALS)
    clean = {"inference_count": 1, "success_count": 1, "computed_unanswered_rows": None}
    assert statistics_problems(clean, accounting) == []
    # The expired one ran in a batch of its own: only the unanswered rows counter shows it.
    wasted = {**clean, "computed_unanswered_rows": 1}
    assert statistics_problems(wasted, accounting) == [
        "the server computed 1 rows for requests already cancelled or expired "
        "(infergate_computed_unanswered_rows delta)"]
    assert len(statistics_problems({**wasted, "inference_count": 2, "success_count": 2}, accounting)) == 3


def test_the_reference_tells_distinct_rows_apart() -> None:
    outputs = reference(inputs(32, seed=4))
    assert np.isfinite(outputs).all()
    gaps = np.abs(outputs[:, None, :] - outputs[None, :, :]).max(axis=2) + np.eye(32)
    assert gaps.min() > 1e-2  # a mixed-up answer is far outside the 1e-4 tolerance


def test_gauges_sum_label_sets_and_say_what_is_missing() -> None:
    text = ("# HELP x\nprocess_open_fds 22.0\ninfergate_in_flight_requests{model=\"a\"} 2.0\n"
            "infergate_in_flight_requests{model=\"b\"} 3.0\n")
    assert gauges(text, ("process_open_fds", "infergate_in_flight_requests", "infergate_event_loop_tasks")) == {
        "process_open_fds": 22.0, "infergate_in_flight_requests": 5.0, "infergate_event_loop_tasks": None}


def _samples(rss: list[int], fds: list[int], tasks: list[float | None]) -> list[Sample]:
    load = [Sample(10.0 * i, LOAD, r, r, f, 1, t, 1.0 if t is not None else None, None, None)
            for i, (r, f, t) in enumerate(zip(rss, fds, tasks))]
    first, last = load[0], load[-1]
    return [Sample(-1.0, IDLE_BEFORE, first.rss_bytes, first.rss_bytes, first.fds, 1, first.tasks, 0.0, None, None),
            *load, Sample(99.0, IDLE_AFTER, last.rss_bytes, last.rss_bytes, last.fds, 1, last.tasks, 0.0, None, None)]


def test_soak_verdict_judges_growth_after_the_warm_up_only() -> None:
    mib = 1 << 20
    # Warm-up is the first 10 s of 100: the jump at t=0 does not count, 104 -> 108.9 MiB is 4.7 %.
    flat = _samples([50 * mib, 104 * mib, 106 * mib, int(108.9 * mib)], [20, 20, 21, 21], [2.0, 2.0, 3.0, 4.0])
    passed = verdict(flat, 100.0, {}, [])
    assert passed["passed"], passed["problems"]
    assert passed["warmup_s"] == 10.0 and passed["rss_growth_pct"] < 5
    leaking = verdict(_samples([100 * mib, 100 * mib, 103 * mib, 106 * mib], [20, 20, 22, 25], [2.0, 2.0, 5.0, 9.0]),
                      100.0, {"RESOURCE_EXHAUSTED": 1}, [])
    assert not leaking["passed"]
    assert [p.split(" ", 1)[0] for p in leaking["problems"]] == ["errors:", "RSS", "fds", "fds", "tasks", "tasks"]
    missing = verdict(_samples([100 * mib] * 4, [20] * 4, [None] * 4), 100.0, {}, [])
    assert missing["passed"] and missing["tasks_gauge"] == "missing" and missing["tasks_growth"] is None


def _run(module: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    serve = ["--serve-args", shlex.join(EXTRA_SERVE_ARGS)] if EXTRA_SERVE_ARGS else []
    return subprocess.run([sys.executable, "-m", module, "--out", str(out), *flags, *serve], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def test_a_short_soak_writes_its_samples_plot_and_verdict(tmp_path: Path) -> None:
    done = _run("infergate.bench.soak", tmp_path, "--duration-s", "20", "--sample-every-s", "2", "--capacity-s", "3")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    verdict_ = report["verdict"]
    assert verdict_["passed"] and verdict_["warmup_s"] == 2.0 and verdict_["tasks_gauge"] == "present"
    assert verdict_["rss_growth_pct"] < 5 and verdict_["fds_growth"] <= 1 and verdict_["tasks_growth"] <= 2
    accounting = report["accounting"]
    assert accounting["counts"]["correct"] == accounting["sent"] > 0
    assert report["server_statistics_delta"]["success_count"] == accounting["sent"]
    phases = [s["phase"] for s in report["samples"]]
    assert phases[0] == IDLE_BEFORE and phases[-1] == IDLE_AFTER and phases.count(LOAD) >= 9
    csv_lines = (tmp_path / "samples.csv").read_text().splitlines()
    assert csv_lines[0].startswith("t_s,phase,rss_bytes") and len(csv_lines) == len(phases) + 1
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict: PASSED" in done.stdout


def test_sigterm_under_load_answers_the_admitted_and_refuses_the_rest(tmp_path: Path) -> None:
    done = _run("infergate.bench.stress", tmp_path, "--mode", "sigterm", "--capacity-s", "2", "--duration-s", "3",
                "--grace-s", "10")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads((tmp_path / "sigterm.json").read_text())
    assert report["verdict"] == {"passed": True, "problems": []}
    assert report["exit_status"] == 0 and 0 < report["sigterm_to_exit_s"] < report["grace_s"]
    phase = report["phases"][1]
    counts = phase["counts"]
    assert counts["correct"] > 0 and counts["UNAVAILABLE"] > 0
    assert counts["correct"] + counts["UNAVAILABLE"] + counts["RESOURCE_EXHAUSTED"] == phase["sent"]
    assert (phase["lost"], phase["duplicated"], phase["mixed_up"], phase["other"]) == (0, 0, 0, 0)
    assert report["in_flight_at_sigterm_answered"] > 0
    assert report["unavailable_draining"] + report["unavailable_port_closed"] == counts["UNAVAILABLE"]
    assert "SIGTERM -> exit" in done.stdout
