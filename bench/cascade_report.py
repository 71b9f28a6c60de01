"""The cascade evaluation's rows from tune_report.json files, the issue's targets on them, and the markdown table."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

MAX_ECE_AFTER = 0.02  # issue 11: expected calibration error after temperature scaling, at most (fraction)
MIN_ANSWERED_AT_SMALL = 0.60  # the tuned cascade answers at least this share of rows at the first stage
MAX_ACCURACY_DROP = 0.005  # cascade accuracy within this of the last stage alone (fraction: 0.5 pp)
REPLAY_TOLERANCE = 1e-9  # the replayed routing must give the tune report's figures: both count the same rows


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def evaluation_row(facts: Mapping[str, Any], tune_report: Mapping[str, Any],
                   evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One dataset's figures on its evaluation rows, with each target's verdict and why it missed, if it did.

    `evidence` (cascade_noise.evidence): per stage the ECE floor of exact calibration on these rows, the drop's
    interval, and the routing replayed from the models."""
    evaluation = tune_report["evaluation"]
    floors = evidence["ece_floors"] if evidence else [None] * len(evaluation["stages"])
    stages = [{**s, "ece_floor": f} if f else s for s, f in zip(evaluation["stages"], floors, strict=True)]
    cascade = evaluation["cascade"]
    eval_rows = int(tune_report["evaluation_rows"])
    drop = float(evaluation["accuracy_drop"])
    answered_small = float(cascade["answered_fraction"][0])
    calibrated = [s["ece_after"] <= MAX_ECE_AFTER and s["ece_after"] < s["ece_before"] for s in stages]
    row = {
        "dataset": facts["dataset"], "rows": dict(facts["rows"]),
        "stages": [{k: s[k] for k in ("model", "accuracy", "ece_before", "ece_after", "nll_before", "nll_after",
                                      "ece_floor") if k in s} for s in stages],
        "temperatures": [s["temperature"] for s in tune_report["stages"]],
        "threshold": tune_report["stages"][0]["threshold"],
        "answered_at_small": answered_small, "cascade_accuracy": float(cascade["accuracy"]),
        "large_accuracy": float(evaluation["reference_accuracy"]), "accuracy_drop": drop,
        "saving_fraction": cascade["saving_fraction"],
        "drop_interval": list(evidence["drop_interval"]) if evidence else None,
        "replayed": dict(evidence["replayed"]) if evidence else None,
        # The first stage's confidence is what routes; the last stage's calibration changes no decision.
        "passes": {"ece_small": calibrated[0], "ece_large": calibrated[-1],
                   "answered_at_small": answered_small >= MIN_ANSWERED_AT_SMALL,
                   "accuracy_drop": drop <= MAX_ACCURACY_DROP + 1e-12},
    }
    row["reasons"] = reasons(row, eval_rows)
    return row


def reasons(row: Mapping[str, Any], eval_rows: int) -> list[str]:
    """What limits a dataset's verdicts: rows too few to resolve the bounds, a small model as good as the large."""
    notes = []
    row_pp = 100.0 / eval_rows
    if row_pp > 100 * MAX_ACCURACY_DROP:
        notes.append(f"one evaluation row is {row_pp:.2f} pp of accuracy, more than the {100 * MAX_ACCURACY_DROP:g} pp "
                     f"bound: a single extra error fails it")
    if 1.0 / eval_rows > MAX_ECE_AFTER:
        notes.append(f"one confidently wrong row moves ECE by up to {100 / eval_rows:.1f} pp on {eval_rows} rows, "
                     f"more than the {100 * MAX_ECE_AFTER:g} % bound")
    replayed = row.get("replayed")
    if replayed:
        for name in ("cascade_accuracy", "large_accuracy", "answered_at_small"):
            if abs(replayed[name] - row[name]) > REPLAY_TOLERANCE:
                notes.append(f"{name}: the routing replayed from the models gives {replayed[name]:.4f}, the tune "
                             f"report {row[name]:.4f}")
    interval = row.get("drop_interval")
    if interval and interval[0] <= MAX_ACCURACY_DROP <= interval[1]:
        notes.append(f"the drop's 95 % paired-bootstrap interval, {100 * interval[0]:+.2f} to {100 * interval[1]:+.2f} "
                     f"pp, holds the {100 * MAX_ACCURACY_DROP:g} pp bound: these rows cannot tell a pass from a fail")
    small, large = row["stages"][0], row["stages"][-1]
    if small["accuracy"] >= large["accuracy"]:
        notes.append(f"the small model is no less accurate than the large on these rows ({_pct(small['accuracy'])} "
                     f"vs {_pct(large['accuracy'])} %): the large model adds nothing to route to")
    for stage in row["stages"]:
        if stage["ece_after"] >= stage["ece_before"]:
            notes.append(f"{stage['model']}: temperature scaling fitted on the tuning rows did not lower ECE on the "
                         f"evaluation rows ({_pct(stage['ece_before'], 2)} -> {_pct(stage['ece_after'], 2)} %; NLL "
                         f"{stage['nll_before']:.4f} -> {stage['nll_after']:.4f})")
        floor = stage.get("ece_floor")
        if floor and stage["ece_after"] > MAX_ECE_AFTER and stage["ece_after"] <= floor["p90"]:
            notes.append(f"{stage['model']}: its ECE after, {_pct(stage['ece_after'], 2)} %, is within what a "
                         f"perfectly calibrated model with its confidences shows on {eval_rows} rows (median "
                         f"{_pct(floor['median'], 2)} %, 90th percentile {_pct(floor['p90'], 2)} %)")
    return notes


def _verdict(passes: Mapping[str, bool]) -> str:
    failed = [name for name, ok in passes.items() if not ok]
    return "pass" if not failed else "fail: " + ", ".join(failed)


def _ece(stage: Mapping[str, Any]) -> str:
    floor = stage.get("ece_floor")
    text = f"{_pct(stage['ece_before'], 2)} -> {_pct(stage['ece_after'], 2)}"
    return text + (f" ({_pct(floor['median'], 2)})" if floor else "")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The results table, a row per dataset; percentages of the evaluation rows."""
    lines = ["| dataset | rows train/tune/eval | small acc % | small ECE % before -> after (floor) | large acc % | "
             "large ECE % before -> after (floor) | threshold | answered at small % | cascade acc % | drop pp | "
             "cost saving % | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        small, large = row["stages"][0], row["stages"][-1]
        sizes = row["rows"]
        threshold = "-" if row["threshold"] is None else f"{row['threshold']:.4f}"
        lines.append(
            f"| {row['dataset']} | {sizes['train']}/{sizes['tune']}/{sizes['eval']} | {_pct(small['accuracy'])} | "
            f"{_ece(small)} | {_pct(large['accuracy'])} | {_ece(large)} | {threshold} | "
            f"{_pct(row['answered_at_small'])} | {_pct(row['cascade_accuracy'])} | "
            f"{100 * row['accuracy_drop']:+.2f} | {_pct(row['saving_fraction'])} | {_verdict(row['passes'])} |")
    return lines


def readme(rows: Sequence[Mapping[str, Any]], header: Sequence[str]) -> str:
    """The evaluation's README: header lines, the table, the targets, and per dataset what limits it."""
    lines = [*header, "", *markdown_table(rows), "",
             f"Targets (issue 11), on the evaluation rows only: ECE after temperature scaling at most "
             f"{100 * MAX_ECE_AFTER:g} % and lower than before (`ece_small` for the stage whose confidence routes, "
             "`ece_large` for the last, whose calibration changes no routing decision; floor: the median ECE a "
             "perfectly calibrated model with the same confidences shows on as many rows, labels drawn from its own "
             "probabilities); at least "
             f"{100 * MIN_ANSWERED_AT_SMALL:g} % of rows answered by the small stage (`answered_at_small`); cascade "
             f"accuracy at most {100 * MAX_ACCURACY_DROP:g} pp below the large model alone (`accuracy_drop`; "
             "negative drop: the cascade is more accurate).", ""]
    for row in rows:
        if row["reasons"]:
            lines.append(f"- **{row['dataset']}**: " + "; ".join(row["reasons"]) + ".")
    return "\n".join(lines) + "\n"
