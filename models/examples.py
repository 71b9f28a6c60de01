"""Builds the example model repository that `infergate serve` serves when given no repository."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from infergate.models.runtime import TORCH_CPU_INSTALL

if TYPE_CHECKING:
    import torch

    from infergate.cascade.routing import Measure
    from infergate.models.config import TensorSpec as ModelTensor

logger = logging.getLogger(__name__)

REPOSITORY_VERSION = "example-repository-v3"  # bump on any change to models, configs or data; names the folder
DATA_DIR_NAME = "example-data-v1"  # sibling of the repository: held-out split and accuracies, never served
COMPLETE_MARKER = ".complete"  # written last into the repository root: version and torch state of the build
HELDOUT_FILE = "digits_heldout.npz"  # X float32 [rows, 64] in [0, 1], y int64 [rows] digit labels
ACCURACY_FILE = "accuracy.json"  # {model name: accuracy on the held-out rows, in [0, 1]}
CASCADE_SPLIT_FILE = "digits_cascade_split.npz"  # tuning_rows, evaluation_rows: int64 row indices into HELDOUT_FILE
CASCADE_EVAL_FILE = "digits_cascade_eval.json"  # digits_cascade's tune report: its figures on the evaluation rows
TORCH_MISSING_WARNING = ("digits_large and digits_cascade skipped: PyTorch is not installed "
                         f"(its CPU build: {TORCH_CPU_INSTALL})")

FEATURES = 64  # 8x8 pixel intensities per digit image
CLASSES = 10  # digits 0-9
PIXEL_MAX = 16.0  # load_digits intensities run 0..16; dividing by this scales features to [0, 1]
HELDOUT_FRACTION = 0.3  # share of the 1,797 images kept out of training, for accuracy and calibration
SPLIT_SEED = 0  # random_state of the held-out split
MODEL_VERSION = "1"  # the single version folder of every example model
MAX_BATCH_SIZE = 64  # rows per batch, config.pbtxt max_batch_size
MAX_QUEUE_DELAY_US = 500  # how long dynamic batching waits for a fuller batch, microseconds
ONNX_OPSET = 17  # default-domain opset of the hand-built ONNX graphs
ONNX_IR_VERSION = 8  # ONNX file format version; kept low so older runtimes load the files
SMALL_INVERSE_L2 = 1.0  # digits_small logistic regression C: inverse L2 penalty strength
SMALL_MAX_ITERATIONS = 1000  # L-BFGS iteration cap; it converges in under 100
LARGE_HIDDEN = (256, 256)  # digits_large hidden layer widths
LARGE_EPOCHS = 20  # passes over the training rows
LARGE_BATCH_ROWS = 64  # rows per optimiser step
LARGE_MAX_LR = 1e-2  # peak learning rate of the one-cycle schedule
LARGE_WARMUP_FRACTION = 0.3  # share of the steps over which the learning rate climbs to its peak
LARGE_WEIGHT_DECAY = 1e-2  # AdamW decoupled weight decay per step, relative to the learning rate
ADAM_BETAS = (0.9, 0.999)  # decay rates of Adam's running gradient mean and mean square
ADAM_EPSILON = 1e-8  # keeps Adam's step finite where the mean square is ~0
TORCH_SEED = 0  # seeds digits_large weight initialisation and shuffling
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed .npz member time, so equal arrays give equal bytes
CASCADE_EVAL_FRACTION = 0.5  # share of the held-out rows digits_cascade is evaluated on; it is tuned on the rest
CASCADE_SPLIT_SEED = 0  # seed of that stratified split, as `infergate cascade tune --seed` defaults to
CASCADE_MAX_ACCURACY_DROP = 0.005  # digits_cascade may lose this much accuracy against digits_large alone
CASCADE_MEASURE: Measure = "max_prob"  # its confidence measure
# Busy microseconds per row of a warm batch of 64, measured in-process by `infergate cascade tune` on a 2-core
# x86-64 VM (CPU); fixed here, not timed at build time, so that equal builds give equal bytes.
EXAMPLE_BUSY_US_PER_ROW = {"digits_small": 0.76, "digits_large": 6.8}

# (tensor name, width): every example tensor is FP32 [batch, width].
TensorSpec = tuple[str, int]
SMALL_INPUTS: list[TensorSpec] = [("INPUT0", FEATURES)]
SMALL_OUTPUTS: list[TensorSpec] = [("OUTPUT0", CLASSES), ("LOGITS", CLASSES)]  # probabilities, logits
LARGE_INPUTS: list[TensorSpec] = [("INPUT__0", FEATURES)]  # TorchScript's names, as Triton's libtorch backend wants
LARGE_OUTPUTS: list[TensorSpec] = [("OUTPUT__0", CLASSES), ("OUTPUT__1", CLASSES)]  # probabilities, logits
FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's digits, features scaled to [0, 1], split once into training and held-out rows."""

    x_train: FloatArray  # [rows, 64]
    y_train: LabelArray  # [rows] digit labels
    x_heldout: FloatArray  # [rows, 64], never seen in training
    y_heldout: LabelArray  # [rows]


def default_cache_dir() -> Path:
    """Returns $INFERGATE_CACHE_DIR, else $XDG_CACHE_HOME/infergate, else ~/.cache/infergate (empty counts as unset)."""
    explicit = os.environ.get("INFERGATE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg_cache) if xdg_cache else Path.home() / ".cache") / "infergate"


def default_repository_dir() -> Path:
    """Returns where `infergate serve` keeps the example repository: <cache>/example-repository-v3."""
    return default_cache_dir() / REPOSITORY_VERSION


def example_data_dir(repository: Path) -> Path:
    """Returns the folder beside repository holding the held-out split and the accuracies."""
    return repository.parent / DATA_DIR_NAME


def build_example_repository(dest: Path) -> Path:
    """Builds the example repository at dest unless a complete one is already there; returns dest.

    Also writes example_data_dir(dest). Everything is built in a temporary folder beside dest and renamed into
    place, so readers and concurrent builders never see a partial repository; builds are deterministic, so
    when two builders race, whichever copy lands is the same. While training it lowers torch's and BLAS's
    process-wide thread counts to one (restored after), so call it before serving, not beside live inference.
    """
    has_torch = _is_torch_available()
    if _is_complete(dest, has_torch):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        started_s = time.perf_counter()
        _build(staging / "repository", staging / "data", has_torch)
        if not _is_complete(dest, has_torch):  # a concurrent builder may have finished meanwhile
            _publish(staging / "data", example_data_dir(dest), staging / "replaced-data")
            _publish(staging / "repository", dest, staging / "replaced-repository")
        logger.info("built example repository %s in %.1f s", dest, time.perf_counter() - started_s)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _is_torch_available() -> bool:
    """Returns whether torch is installed, without paying for importing it."""
    return importlib.util.find_spec("torch") is not None


def _marker_text(has_torch: bool) -> str:
    """Returns the completion marker's content; a build without torch goes stale once torch is installed."""
    return f"{REPOSITORY_VERSION} torch={'yes' if has_torch else 'no'}\n"


def _is_complete(repository: Path, has_torch: bool) -> bool:
    """Returns whether repository holds a finished build of this version for this torch state."""
    try:
        return (repository / COMPLETE_MARKER).read_text(encoding="utf-8") == _marker_text(has_torch)
    except OSError:
        return False


def _publish(staged: Path, target: Path, trash: Path) -> None:
    """Renames staged onto target, first moving any earlier target into trash (which the caller deletes).

    If a concurrent builder renames its copy in first, that copy stays and staged is left behind.
    """
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        pass  # nothing there yet, or a concurrent builder moved it first
    try:
        os.rename(staged, target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise


def _build(repository: Path, data_dir: Path, has_torch: bool) -> None:
    """Writes the models under repository, the held-out split and accuracies under data_dir, then the marker."""
    split = _load_split()
    data_dir.mkdir(parents=True)
    small_logits = _build_digits_small(repository / "digits_small", split)
    accuracy = {"digits_small": _accuracy(small_logits, split.y_heldout)}
    _build_identity(repository / "identity")
    if has_torch:
        large_logits = _build_digits_large(repository / "digits_large", split)
        accuracy["digits_large"] = _accuracy(large_logits, split.y_heldout)
        _build_digits_cascade(repository, data_dir, split.y_heldout, small_logits, large_logits)
    else:
        logger.warning(TORCH_MISSING_WARNING)
    _write_npz(data_dir / HELDOUT_FILE, {"X": split.x_heldout, "y": split.y_heldout})
    (data_dir / ACCURACY_FILE).write_text(json.dumps(accuracy, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (repository / COMPLETE_MARKER).write_text(_marker_text(has_torch), encoding="utf-8")


def _load_split() -> DigitsSplit:
    """Returns the fixed training / held-out split of scikit-learn's bundled digits."""
    # Imported here, not at the top: a server whose repository is already built never pays for scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x = (np.asarray(images) / PIXEL_MAX).astype(np.float32)
    y = np.asarray(labels).astype(np.int64)
    x_train, x_heldout, y_train, y_heldout = train_test_split(x, y, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED)
    return DigitsSplit(x_train, y_train, x_heldout, y_heldout)


def _accuracy(logits: FloatArray, labels: LabelArray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _build_digits_small(model_dir: Path, split: DigitsSplit) -> FloatArray:
    """Writes digits_small (logistic regression as ONNX Gemm + Softmax); returns its held-out logits."""
    weights, bias = _train_logistic_regression(split)
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "W", "B"], ["LOGITS"]),
        helper.make_node("Softmax", ["LOGITS"], ["OUTPUT0"], axis=1),
    ]
    initializers = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")]
    _save_onnx(_batched_graph("digits_small", nodes, SMALL_INPUTS, SMALL_OUTPUTS, initializers), model_dir)
    _write_config(model_dir, "onnxruntime_onnx", SMALL_INPUTS, SMALL_OUTPUTS)
    return split.x_heldout @ weights + bias


def _train_logistic_regression(split: DigitsSplit) -> tuple[FloatArray, FloatArray]:
    """Returns (weights [64, 10], bias [10]) of a multinomial logistic regression fitted to the training rows."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a problem this small it is much faster than several, and the sums keep one order.
    with threadpool_limits(limits=1):
        fitted = LogisticRegression(C=SMALL_INVERSE_L2, max_iter=SMALL_MAX_ITERATIONS).fit(
            split.x_train.astype(np.float64), split.y_train
        )
    return np.asarray(fitted.coef_.T, dtype=np.float32), np.asarray(fitted.intercept_, dtype=np.float32)


def _build_identity(model_dir: Path) -> None:
    """Writes identity (ONNX Identity, [batch, 64] in and out): the per-request overhead ceiling benchmark."""
    inputs, outputs = [("INPUT0", FEATURES)], [("OUTPUT0", FEATURES)]
    node = helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])
    _save_onnx(_batched_graph("identity", [node], inputs, outputs, []), model_dir)
    _write_config(model_dir, "onnxruntime_onnx", inputs, outputs)


def _batched_graph(
    name: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    initializers: Sequence[onnx.TensorProto],
) -> onnx.GraphProto:
    """Returns an ONNX graph whose inputs and outputs are FP32 [batch, width] with a symbolic batch dimension."""

    def value_infos(specs: Sequence[TensorSpec]) -> list[onnx.ValueInfoProto]:
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n, width in specs]

    return helper.make_graph(nodes, name, value_infos(inputs), value_infos(outputs), initializers)


def _save_onnx(graph: onnx.GraphProto, model_dir: Path) -> None:
    """Checks graph as an opset-17, IR-8 model and writes it to model_dir/1/model.onnx."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="infergate")
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    path = model_dir / MODEL_VERSION / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(model.SerializeToString())


def _write_config(model_dir: Path, platform: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Writes model_dir/config.pbtxt (protobuf text of inference.ModelConfig) for a batched FP32 model."""

    def tensors(specs: Sequence[TensorSpec]) -> str:
        return ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {width} ] }}' for n, width in specs)

    (model_dir / "config.pbtxt").write_text(
        f'name: "{model_dir.name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        f"input [\n{tensors(inputs)}\n]\n"
        f"output [\n{tensors(outputs)}\n]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n"
        "instance_group [ { count: 1 kind: KIND_AUTO } ]\n",
        encoding="utf-8",
    )


def _write_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Writes arrays as an uncompressed .npz that np.load reads; fixed member times make equal arrays equal bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIMESTAMP), "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _build_digits_large(model_dir: Path, split: DigitsSplit) -> FloatArray:
    """Writes digits_large (MLP 64-256-256-10 as TorchScript); returns its held-out logits."""
    import torch

    net = _train_mlp(split)
    with torch.no_grad():
        logits = net(torch.from_numpy(split.x_heldout)).numpy()
    (model_dir / MODEL_VERSION).mkdir(parents=True)
    _save_torchscript(net, model_dir / MODEL_VERSION / "model.pt")
    _write_config(model_dir, "pytorch_libtorch", LARGE_INPUTS, LARGE_OUTPUTS)
    return np.asarray(logits, dtype=np.float32)


@dataclass(frozen=True)
class _StageTensors:
    """What tensor matching needs of a stage model: its name and FP32 [batch, width] tensors."""

    name: str
    inputs: Sequence[ModelTensor]
    outputs: Sequence[ModelTensor]

    @classmethod
    def of(cls, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> _StageTensors:
        from infergate.models.config import TensorSpec as ModelTensor

        return cls(name, *([ModelTensor(n, "FP32", (width,)) for n, width in specs] for specs in (inputs, outputs)))


def _build_digits_cascade(repository: Path, data_dir: Path, labels: LabelArray, small_logits: FloatArray,
                          large_logits: FloatArray) -> None:
    """Writes digits_cascade (digits_small, then digits_large) and both stages' calibration.json, fitted and tuned
    as `infergate cascade tune` does on one half of the held-out rows; its figures on the other half go to data_dir.
    """
    from infergate.cascade.calibrate_command import StageScores, write_stage_calibration
    from infergate.cascade.offline import StageCost
    from infergate.cascade.splits import stratified_split
    from infergate.cascade.tune_command import tensor_maps, write_cascade
    from infergate.cascade.tuned import TuneStage, tune_cascade
    from infergate.server.telemetry.cost import DEFAULT_CPU_CORE_PRICE_USD_PER_HOUR as CORE_USD_PER_HOUR

    tuning_rows, evaluation_rows = stratified_split(labels, [1.0 - CASCADE_EVAL_FRACTION, CASCADE_EVAL_FRACTION],
                                                    CASCADE_SPLIT_SEED)
    stages = []
    for name, output, logits in (("digits_small", "LOGITS", small_logits), ("digits_large", "OUTPUT__1", large_logits)):
        busy_us = EXAMPLE_BUSY_US_PER_ROW[name]
        cost = StageCost(busy_us * 1e-6 * CORE_USD_PER_HOUR / 3600.0,
                         f"fixed for the example repository: {busy_us:g} us busy per row (measured in-process on a "
                         f"2-core x86-64 VM) x {CORE_USD_PER_HOUR:g} USD/h (one CPU core's default price)")
        scores = StageScores(name, MODEL_VERSION, output, "logits", logits[tuning_rows].astype(np.float64))
        stages.append(TuneStage(scores, logits[evaluation_rows].astype(np.float64), cost, None))
    tuned = tune_cascade("digits_cascade", stages, labels[tuning_rows], labels[evaluation_rows],
                         CASCADE_MAX_ACCURACY_DROP, CASCADE_MEASURE)
    if tuned.refusal:  # the build is deterministic: this would be a change to the models, not bad luck
        raise RuntimeError(f"digits_cascade: {tuned.refusal}")
    for stage, calibration in zip(stages, tuned.calibrations):
        write_stage_calibration(repository / stage.tuning.model, stage.tuning, calibration)
    tensors = [_StageTensors.of("digits_small", SMALL_INPUTS, SMALL_OUTPUTS),
               _StageTensors.of("digits_large", LARGE_INPUTS, LARGE_OUTPUTS)]
    write_cascade(repository / "digits_cascade", tuned, tensor_maps(tensors, CASCADE_MEASURE), CASCADE_MEASURE,
                  tensors[0], MAX_BATCH_SIZE)
    _write_npz(data_dir / CASCADE_SPLIT_FILE, {"tuning_rows": tuning_rows.astype(np.int64),
                                               "evaluation_rows": evaluation_rows.astype(np.int64)})
    (data_dir / CASCADE_EVAL_FILE).write_text(json.dumps(tuned.report, indent=2) + "\n", encoding="utf-8")


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Runs the block with torch limited to count intra-op threads, restoring the previous count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_mlp(split: DigitsSplit) -> torch.nn.Sequential:
    """Returns an MLP (logits out) trained on the training rows, in eval mode; same inputs, same weights."""
    import torch

    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    widths = (FEATURES, *LARGE_HIDDEN)
    # One thread keeps every sum in one order; fork_rng leaves the caller's global RNG as it was.
    with _torch_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(TORCH_SEED)
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], CLASSES))
        batches = [rows for _ in range(LARGE_EPOCHS) for rows in torch.split(torch.randperm(len(x)), LARGE_BATCH_ROWS)]
        parameters = list(net.parameters())
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in parameters]
        for step, rows in enumerate(batches, start=1):
            loss = torch.nn.functional.cross_entropy(net(x[rows]), y[rows])
            gradients = torch.autograd.grad(loss, parameters)
            _adamw_step(parameters, gradients, moments, step, _learning_rate(step, len(batches)))
    return net.eval()


def _learning_rate(step: int, total_steps: int) -> float:
    """Returns the one-cycle learning rate of step (1-based): linear up to LARGE_MAX_LR, then linear down to 0."""
    peak_step = max(1, round(LARGE_WARMUP_FRACTION * total_steps))
    if step <= peak_step:
        return LARGE_MAX_LR * step / peak_step
    return LARGE_MAX_LR * (total_steps - step) / (total_steps - peak_step)


def _adamw_step(
    parameters: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    moments: Sequence[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    learning_rate: float,
) -> None:
    """Applies one AdamW update in place to parameters and their (first, second) moments.

    Written out rather than torch.optim.AdamW: torch's optimisers import torch._dynamo on construction,
    which alone costs seconds of a build that should take a few.
    """
    import torch

    beta1, beta2 = ADAM_BETAS
    with torch.no_grad():
        for parameter, gradient, (mean, square) in zip(parameters, gradients, moments, strict=True):
            parameter.mul_(1.0 - learning_rate * LARGE_WEIGHT_DECAY)
            mean.mul_(beta1).add_(gradient, alpha=1.0 - beta1)
            square.mul_(beta2).addcmul_(gradient, gradient, value=1.0 - beta2)
            denominator = (square / (1.0 - beta2**step)).sqrt_().add_(ADAM_EPSILON)
            parameter.addcdiv_(mean, denominator, value=-learning_rate / (1.0 - beta1**step))


def _save_torchscript(net: torch.nn.Module, path: Path) -> None:
    """Traces net with Triton's libtorch signature, INPUT__0 -> (OUTPUT__0 probabilities, OUTPUT__1 logits)."""
    import torch

    class TritonClassifier(torch.nn.Module):
        def __init__(self, logits: torch.nn.Module) -> None:
            super().__init__()
            self.logits = logits

        # The argument carries the config's input name: Triton maps inputs by name or by the __<index> suffix.
        def forward(self, INPUT__0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.logits(INPUT__0)
            return torch.softmax(logits, dim=1), logits

    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.13 deprecates TorchScript, but Triton's libtorch backend and our runtime load only TorchScript.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        # Traced, not scripted: plain tensor code, and tracing needs no source for this local class. No
        # check_trace: a static MLP cannot trace wrong, and the check imports torch.distributed (seconds).
        # torch 2.13's deprecation wrapper leaves trace unannotated, hence the ignore.
        classifier, example = TritonClassifier(net).eval(), torch.zeros(1, FEATURES)
        traced = torch.jit.trace(classifier, example, check_trace=False)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
