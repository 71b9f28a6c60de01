"""The cascade evaluation on held-out rows: `infergate cascade tune` on the example and scikit-learn's tables.

    python -m infergate.bench.cascade_eval --out bench/results/cascade-2026-12-02/eval

For the example (digits_small, a logistic regression in ONNX, then digits_large, a TorchScript MLP, from
infergate.models.examples) the example's held-out split is cut in two, tuning and evaluation rows. For each
table in cascade_datasets.DATASETS a logistic regression and a larger MLP are trained on a training split and
the rest cut into tuning and evaluation rows; all splits stratified with one fixed seed. The tune command runs
as a subprocess, fits temperatures and the threshold on the tuning rows only, and reports on the evaluation
rows; this module collects its tune_report.json files into results.json and a README table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from infergate.bench import cascade_datasets as cd
from infergate.bench import cascade_report
from infergate.bench.cascade_noise import evidence
from infergate.bench.perf_compare import git_commit
from infergate.cascade.splits import stratified_split

logger = logging.getLogger(__name__)

EXAMPLE = "digits_example"  # the example's row in the results
EXAMPLE_STAGES = ("digits_small", "digits_large")
EXAMPLE_FRACTIONS = (0.5, 0.5)  # the example's held-out split: tuning, evaluation
MAX_ACCURACY_DROP = cascade_report.MAX_ACCURACY_DROP  # what tune is asked for: the target itself
MEASURE = "max_prob"
TUNE_TIMEOUT_S = 600  # per dataset; a tune of a few hundred rows takes seconds
CALIBRATION_FILE = "calibration.json"


def tune_command(repository: Path, name: str, stages: tuple[str, str], data: Path, eval_data: Path,
                 out: Path) -> list[str]:
    """`infergate cascade tune` for one dataset, as this interpreter runs it."""
    return [sys.executable, "-m", "infergate.server", "cascade", "tune", "--model-repository", str(repository),
            "--name", name, "--stages", ",".join(stages), "--data", str(data), "--eval-data", str(eval_data),
            "--max-accuracy-drop", str(MAX_ACCURACY_DROP), "--measure", MEASURE, "--out", str(out)]


def run_tune(command: list[str], log_path: Path) -> dict[str, Any]:
    """Runs the tune command, its output to log_path; returns its tune_report.json."""
    started_s = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=TUNE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tune exited {done.returncode}: {log_path.read_text(errors='replace')[-3000:]}")
    out = Path(command[command.index("--out") + 1])
    logger.info("tuned %s in %.1f s", out.name, time.monotonic() - started_s)
    report: dict[str, Any] = json.loads((out / "tune_report.json").read_text(encoding="utf-8"))
    return report


def prepare_example(repository: Path, data_dir: Path, scratch: Path) -> dict[str, Any]:
    """Copies the example's two stages (without any calibration) and splits its held-out rows; returns facts."""
    from infergate.models import examples

    built = examples.build_example_repository(scratch / "example-repository")
    for stage in EXAMPLE_STAGES:
        shutil.copytree(built / stage, repository / stage)
        (repository / stage / CALIBRATION_FILE).unlink(missing_ok=True)  # fitted on rows we may evaluate on
    with np.load(examples.example_data_dir(built) / examples.HELDOUT_FILE) as held_out:
        x, y = held_out["X"], held_out["y"]
    tune, evaluation = stratified_split(y, EXAMPLE_FRACTIONS, cd.SPLIT_SEED)
    data_dir.mkdir(parents=True, exist_ok=True)
    names = ("INPUT0",)
    cd.write_npz(data_dir / "tune.npz", x[tune], y[tune], names)
    cd.write_npz(data_dir / "eval.npz", x[evaluation], y[evaluation], names)
    from sklearn.datasets import load_digits

    train_rows = len(load_digits().target) - len(y)  # the example trained on every image it did not hold out
    return {"dataset": EXAMPLE, "loader": "infergate.models.examples (sklearn load_digits, held-out split)",
            "features": int(x.shape[1]), "classes": int(y.max()) + 1,
            "rows": {"train": train_rows, "tune": len(tune), "eval": len(evaluation)},
            "split_seed": cd.SPLIT_SEED,
            "small": {"model": EXAMPLE_STAGES[0], "kind": "logistic regression (ONNX)"},
            "large": {"model": EXAMPLE_STAGES[1], "kind": "MLP 64-256-256-10 (TorchScript)"}}


def evaluate(out: Path, scratch: Path, datasets: list[str]) -> list[dict[str, Any]]:
    """Builds, tunes and collects every dataset in turn; returns the results rows."""
    repository, raw = scratch / "repository", out / "raw"
    repository.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in datasets:
        data_dir = scratch / "data" / name
        if name == EXAMPLE:
            facts, stages = prepare_example(repository, data_dir, scratch), EXAMPLE_STAGES
        else:
            spec = cd.DATASETS[name]
            facts, stages = cd.build_dataset(spec, repository, data_dir), (cd.small_name(spec), cd.large_name(spec))
        (raw / name).mkdir(parents=True, exist_ok=True)
        command = tune_command(repository, f"{name}_cascade", stages, data_dir / "tune.npz", data_dir / "eval.npz",
                               raw / name)
        report = run_tune(command, raw / name / "tune.log")
        row = cascade_report.evaluation_row(facts, report, evidence(repository, data_dir / "eval.npz", report))
        row.update(facts=facts, command=shlex.join(command).replace(str(scratch), "$WORK"))
        rows.append(row)
        print(f"{name}: {row['passes']}", flush=True)
    return rows


def header(rows: list[dict[str, Any]], argv: list[str]) -> list[str]:
    return ["# Cascade evaluation on held-out rows (issue 11)", "",
            f"Command: `python -m infergate.bench.cascade_eval {shlex.join(argv)}`  ",
            f"Commit: {git_commit()}; host {platform.node()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}.  ",
            f"Each dataset: `infergate cascade tune --max-accuracy-drop {MAX_ACCURACY_DROP} --measure {MEASURE}` fits "
            "T and the threshold on the tuning rows; every figure below is on the evaluation rows, which neither "
            "saw. Splits stratified, seed 0, fixed before any result. Raw tune_report.json and logs in raw/. The "
            "stages were then rerun here on the evaluation rows at the fitted T and threshold: the replayed routing "
            "(results.json `replayed`) is checked against the report (a note below where it differs), and gives the "
            "ECE floor and the drop's paired-bootstrap interval.", "",
            "Models: " + "; ".join(f"{r['dataset']}: {r['facts']['small']['kind']} then "
                                   f"{r['facts']['large']['kind']}" for r in rows) + "."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.cascade_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for README.md, results.json and raw/")
    parser.add_argument("--datasets", default=",".join([EXAMPLE, *cd.DATASETS]),
                        help="comma-separated, from: " + ", ".join([EXAMPLE, *cd.DATASETS]))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder kept after the run (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d != EXAMPLE and d not in cd.DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="infergate-cascade-eval-") as temp:
        scratch = args.work or Path(temp)
        rows = evaluate(args.out, scratch, datasets)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    text = cascade_report.readme(rows, header(rows, sys.argv[1:] if argv is None else argv))
    (args.out / "README.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
