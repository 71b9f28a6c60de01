"""The cascade's part of the command line: `infergate calibrate` and `infergate cascade tune`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from infergate.cascade.datafile import LabelledData, read_labelled
from infergate.cascade.errors import CascadeError
from infergate.cascade.offline import PriceOf, StageModel, open_local
from infergate.cascade.routing import MEASURES, Measure
from infergate.models.config import ModelSpec
from infergate.models.errors import InferError
from infergate.server.help_format import HelpFormatter
from infergate.server.telemetry.cost import (
    DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR,
    cpu_cores,
    device_price,
    model_price,
    parse_price,
)
from infergate.server.telemetry.gpu import Gpus, gpu_index

logger = logging.getLogger(__name__)

COMMANDS = ("calibrate", "cascade")
EXIT_BAD_INPUT = 2  # argparse's status for a usage error
EXIT_UNREACHABLE = 1  # --target did not answer
DEFAULT_MAX_ACCURACY_DROP = 0.005  # half a percentage point of the last stage's accuracy
DEFAULT_EVAL_FRACTION = 0.5  # share of --data kept out of tuning, for the reported figures


def add_commands(commands: Any) -> None:
    calibrate = commands.add_parser("calibrate", formatter_class=HelpFormatter,
                                    help="fit a model output's temperature on labelled rows (calibration.json)")
    _add_model_flags(calibrate)
    calibrate.add_argument("--model", required=True, metavar="NAME", help="the model to calibrate")
    calibrate.add_argument("--output", default=None, metavar="NAME",
                           help="the FP32 [classes] output to calibrate; default: the only one, else the one named "
                                "like logits, else the one of probability rows")
    calibrate.add_argument("--output-kind", choices=("logits", "probabilities"), default=None,
                           help="what the output holds; default: probabilities when rows are >= 0 and sum to 1")
    calibrate.add_argument("--version", type=int, default=None, metavar="N",
                           help="the model version; default: the newest served")
    calibrate.add_argument("--out", type=Path, default=None, metavar="DIR",
                           help="where the report and reliability diagram go; default: ./calibration-NAME")
    cascade = commands.add_parser("cascade", help="build model cascades")
    actions = cascade.add_subparsers(dest="cascade_command", required=True, parser_class=type(cascade))
    tune = actions.add_parser("tune", formatter_class=HelpFormatter,
                              help="tune a small-to-large cascade on labelled rows and write it as a model")
    _add_model_flags(tune)
    tune.add_argument("--name", required=True, help="the cascade model's folder in the repository")
    tune.add_argument("--stages", required=True, metavar="SMALL,LARGE[,...]", help="stage models, small to large")
    held_out = tune.add_mutually_exclusive_group()
    held_out.add_argument("--eval-data", type=Path, default=None, metavar="FILE.npz",
                          help="rows to report on; default: a stratified --eval-fraction of --data")
    held_out.add_argument("--eval-fraction", type=float, default=DEFAULT_EVAL_FRACTION, metavar="F",
                          help="share of --data kept out of tuning for the reported figures")
    tune.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP, metavar="D",
                      help="absolute accuracy the cascade may lose against the last stage alone, in [0, 1]")
    tune.add_argument("--measure", choices=sorted(MEASURES), default="max_prob", help="confidence measure")
    tune.add_argument("--outputs", default=None, metavar="OUT_SMALL,OUT_LARGE",
                      help="each stage's routed output; default: as its calibration.json says, else (a later "
                           "stage) its name for the output stages[0] routes on, else chosen like calibrate's --output")
    tune.add_argument("--seed", type=int, default=0,
                      help="seed of the stratified tuning/evaluation split of --data (default 0)")
    tune.add_argument("--out", type=Path, default=None, metavar="DIR",
                      help="where the report and accuracy-cost plot go; default: ./cascade-NAME")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, required=True, metavar="REPO",
                        help="the model repository, where calibration.json (and the cascade) are written")
    parser.add_argument("--data", type=Path, required=True, metavar="FILE.npz",
                        help="arrays named after the model's inputs, plus y: integer class labels")
    parser.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="run the models on this server instead of in-process; default: in-process")
    parser.add_argument("--cpu-core-price-usd-per-hour", default=str(DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR),
                        metavar="USD", help="what one CPU core costs per hour, as `infergate serve` takes it")


def run_command(args: argparse.Namespace) -> int:
    """Runs calibrate or cascade tune; bad input is one line and exit 2, an unreachable --target exit 1."""
    from infergate.server.remote_model import TargetUnreachable

    command = "calibrate" if args.command == "calibrate" else f"cascade {args.cascade_command}"
    try:
        return _calibrate(args) if args.command == "calibrate" else _tune(args)
    except TargetUnreachable as exc:
        print(f"infergate {command}: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (CascadeError, InferError, ValueError) as exc:
        print(f"infergate {command}: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _calibrate(args: argparse.Namespace) -> int:
    from infergate.cascade.calibrate_command import calibrate

    _check_file("--data", args.data)
    model = _open(args, args.model, args.version)
    data = read_labelled(args.data, model.inputs, model.name)
    calibrate(model, data, args.model_repository / args.model, args.out or Path(f"calibration-{args.model}"),
              args.output, args.output_kind)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from infergate.cascade.tune_command import check_names, split_rows, tune

    stages = [name.strip() for name in args.stages.split(",")]
    if not 0.0 <= args.max_accuracy_drop <= 1.0:
        raise CascadeError(f"--max-accuracy-drop is {args.max_accuracy_drop!r}, expected a number in [0, 1]")
    outputs: list[str | None] = [None] * len(stages)
    if args.outputs is not None:
        outputs = [name.strip() or None for name in args.outputs.split(",")]
        if len(outputs) != len(stages):
            raise CascadeError(f"--outputs {args.outputs!r} names {len(outputs)} output(s), expected {len(stages)}, "
                               "one per --stages model")
    check_names(args.model_repository, args.name, stages)
    _check_file("--data", args.data)
    if args.eval_data is not None:
        _check_file("--eval-data", args.eval_data)
    models = [_open(args, name, None) for name in stages]
    data = read_labelled(args.data, models[0].inputs, models[0].name)
    eval_data: LabelledData | None = None
    if args.eval_data is not None:
        eval_data = read_labelled(args.eval_data, models[0].inputs, models[0].name)
    tuning, evaluation = split_rows(data, eval_data, args.eval_fraction, args.seed)
    measure: Measure = args.measure
    return tune(args.model_repository, args.name, models, tuning, evaluation, args.max_accuracy_drop, measure,
                outputs, args.out or Path(f"cascade-{args.name}"))


def _open(args: argparse.Namespace, name: str, version: int | None) -> StageModel:
    core_price = parse_price(args.cpu_core_price_usd_per_hour, "--cpu-core-price-usd-per-hour")
    if args.target is not None:
        from infergate.server.remote_model import RemoteModel

        return RemoteModel(args.target, name, version, core_price)
    return open_local(args.model_repository, name, version, _price_of(core_price))


def _price_of(core_usd_per_hour: float) -> PriceOf:
    """Telemetry's price of one instance: the device's default, then the model's price_usd_per_hour parameter."""
    def price(spec: ModelSpec, device: str) -> tuple[float, str]:
        index = gpu_index(device)
        gpu_name = Gpus().name(index) if index is not None else ""  # NVML only for a model on a GPU
        found = model_price(spec.name, spec.parameters,
                            device_price(device, cpu_cores(spec.parameters), core_usd_per_hour, None, gpu_name))
        return found.usd_per_hour, found.source

    return price


def _check_file(flag: str, path: Path) -> None:
    if not path.is_file():
        raise CascadeError(f"{flag} {path}: no such file, expected an .npz of the model's inputs and y")
