#!/usr/bin/env bash
# GPU benchmark in one bounded command, run from a checkout on a GPU node (a CUDA build of torch and
# onnxruntime-gpu installed in $PYTHON; Dockerfile.gpu's image has both). Measures, CPU against GPU:
#   direct     onnxruntime and torch called in this process, batch 1..64: mlp_small and mlp_large (the
#              reference models, bench/reference_models.py) and a ResNet-50 (torchvision's architecture,
#              bottlenecks 3-4-6-3 at width 64, 224x224 input, 25,530,472 random weights, no BatchNorm: folded
#              into the convolutions' biases, as an exported model has it), built here as ONNX and as
#              TorchScript from one set of weights, so nothing is downloaded and torchvision is not needed
#   served     the same models through `infergate serve` (every instance KIND_GPU, then KIND_CPU), batch 1,
#              16, 64 at concurrency 8, with perf_analyzer when $PERF_ANALYZER is set, else `infergate bench`,
#              each point beside the direct call's rows/s at that batch
#   front end  mlp_small, batch 1, concurrency 64, against `--workers 1,2,4,8` (the server's own default
#              transport for each: its log line, recorded, says which), the gRPC front end's ceiling
# and writes gpu-bench.md and gpu-bench.json (host, GPU, versions, commit, settings) to OUT_DIR, rewritten
# after each part, so a run cut short still leaves what it measured. Bounded: the whole command, an install
# of infergate included, aims to finish inside BUDGET_S (420 s) and is killed at BUDGET_S + 40 s; each part
# has its share of the budget, and a step that no longer fits is listed as skipped, with why.
# On a machine without a GPU it says so and exits 0 without doing anything.
# Usage: bench/gpu.sh [--dry-run] [OUT_DIR]      (OUT_DIR: default $OUT, else /tmp/infergate-gpu-bench)
#   --dry-run: no GPU needed; every step once on the CPU with tiny models and windows, in seconds (tests/deploy)
#   PYTHON (python3), PERF_ANALYZER (unset: the repository's load harness), BUDGET_S (420)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mode=gpu
if [ "${1:-}" = "--dry-run" ]; then mode=dry-run; shift; fi
out=${1:-${OUT:-/tmp/infergate-gpu-bench}}
python=${PYTHON:-python3}
budget_s=${BUDGET_S:-420}
hard_limit_s=$((budget_s + 40))  # past the budget: the run is killed (the report written so far stays)

if [ "$mode" = gpu ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu.sh: no NVIDIA GPU here (nvidia-smi finds none): nothing to measure; exiting 0 (--dry-run runs every step on the CPU)"
    exit 0
  fi
  if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" >/dev/null 2>&1; then
    echo "gpu.sh: $python has no CUDA build of torch that sees the GPU: nothing to measure; exiting 0" \
      "(pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130, or use Dockerfile.gpu's image)"
    exit 0
  fi
  if "$python" -m pip show onnxruntime >/dev/null 2>&1 && "$python" -m pip show onnxruntime-gpu >/dev/null 2>&1; then
    echo "gpu.sh: warning: onnxruntime and onnxruntime-gpu are both installed in $python; they share one module," \
      "so whichever was installed last wins (pip uninstall -y onnxruntime, then reinstall onnxruntime-gpu)" >&2
  fi
fi
if ! "$python" -c "import infergate.server" >/dev/null 2>&1; then
  # onnxruntime-gpu already there: keep it (setup.py's INFERGATE_GPU=1 asks for it instead of onnxruntime).
  gpu_ort=$("$python" -m pip show onnxruntime-gpu >/dev/null 2>&1 && echo 1 || echo 0)
  echo "gpu.sh: installing infergate into $python (INFERGATE_GPU=$gpu_ort)"
  INFERGATE_GPU=$gpu_ort timeout $((budget_s / 2)) "$python" -m pip install -q . || exit 1
fi
mkdir -p "$out" || exit 1
work=$(mktemp -d "${TMPDIR:-/tmp}/infergate-gpu-bench.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
script="$work/gpu_bench.py"
cat >"$script" <<'PY'
"""bench/gpu.sh's measurements: see the script's header. argv: MODE (gpu | dry-run), OUT_DIR, WORK_DIR."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infergate.bench.reference_models import IR_VERSION, OPSET, write_reference_models

MODE, OUT, WORK = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
IS_DRY = MODE == "dry-run"
BUDGET_S = float(os.environ["GPU_BENCH_LEFT_S"])  # what the shell left of BUDGET_S after its own steps
STARTED = time.monotonic()
# Each part's end, as a share of the budget: direct calls, then the served points, then the front end.
PART_ENDS = {"direct": 0.38, "served": 0.76, "frontend": 1.0}
CORES = os.cpu_count() or 1
PERF_ANALYZER = os.environ.get("PERF_ANALYZER") or None
# Sizes: the real run, and the dry run that only exercises the code on a CPU in seconds.
DEVICES = ("cpu",) if IS_DRY else ("cuda", "cpu")  # the GPU first: the part's budget goes to it first
BATCHES = (1, 4) if IS_DRY else (1, 2, 4, 8, 16, 32, 64)
SERVED_BATCHES = (1,) if IS_DRY else (1, 16, 64)
SERVED_CONCURRENCY = 8  # requests in flight per served point
WORKERS = (1, 2) if IS_DRY else (1, 2, 4, 8)
FRONTEND_CONCURRENCY = 16 if IS_DRY else 64
CLIENT_PROCESSES = 1 if IS_DRY else max(2, min(8, CORES // 4))  # the load harness's, for the front end
CELL_S = 0.05 if IS_DRY else 0.4  # timing window of one direct (model, runtime, device, batch) cell
WARMUP_CALLS, MIN_CALLS = 2, 3  # per direct cell: cuDNN picks its algorithms in the first calls
POINT_S, WARMUP_S = (0.5, 0.2) if IS_DRY else (2.0, 0.5)  # window and warm-up of one served point
# perf_analyzer's -s: windows within this many percent of each other count as stable. The dry run only exercises
# the code, on a shared 2-core CI machine whose half-second windows need not agree: any window will do there.
STABILITY_PCT = 100 if IS_DRY else 25
POINT_OVERHEAD_S = 4.0  # the client's start, its requests sent alone for the answers, its exit
RESNET_BLOCKS, RESNET_WIDTH, IMAGE = ((1, 1, 1, 1), 8, 32) if IS_DRY else ((3, 4, 6, 3), 64, 224)
CLASSES = 10 if IS_DRY else 1000
SERVER_START_S = 180.0  # loading ResNet-50 onto the GPU, CUDA context and cuDNN included
SERVER_EXPECTED_S = 5.0 if IS_DRY else 30.0  # what a start usually takes, to see whether one fits
STOP_S = 20.0  # SIGTERM to exit before SIGKILL; the servers drain for at most --exit-timeout-s 5
MODELS = ("mlp_small", "mlp_large", "resnet50")
# Served: these and, with torch, the TorchScript ResNet (the dry run loads it, measures mlp_small only).
SERVED_MODELS = ("mlp_small",) if IS_DRY else (*MODELS, "resnet50_torch")
SERVING_LINE = re.compile(r"serving (\d+)/(\d+) models; gRPC on (\S+?)(?:;|\s).*?\(([^)]*)\)\s*$", re.M)
skipped: list[str] = []
live_servers: list[Server] = []  # started and not yet stopped: killed if this process is told to stop


def left_s(part: str = "frontend") -> float:
    """Seconds left of the budget, or of a part's share of it."""
    return BUDGET_S * PART_ENDS[part] - (time.monotonic() - STARTED)


def fits(seconds: float, what: str, part: str) -> bool:
    """Whether `what` (about `seconds` long) fits in its part's budget; when not, it is listed as skipped."""
    if left_s(part) > seconds:
        return True
    skipped.append(f"{what}: skipped, {seconds:.0f} s expected, {max(left_s(part), 0):.0f} s of the {part} "
                   f"part's budget left")
    return False


# -- models --------------------------------------------------------------------------------------------------

def resnet_weights(rng: np.random.Generator) -> list[dict[str, Any]]:
    """ResNet-50's layers with He-initialised convolutions and zero biases (BatchNorm folded away); each
    block's last convolution scaled down so random activations stay finite through 16 residual blocks."""
    def conv(name: str, c_in: int, c_out: int, k: int, stride: int = 1, scale: float = 1.0) -> dict[str, Any]:
        std = np.float32(scale * np.sqrt(2 / (c_in * k * k)))  # He initialisation
        w = rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * std
        return {"op": "conv", "name": name, "w": w, "b": np.zeros(c_out, np.float32), "stride": stride, "pad": k // 2}

    layers = [conv("stem", 3, RESNET_WIDTH, 7, 2), {"op": "maxpool"}]
    c_in = RESNET_WIDTH
    for stage, blocks in enumerate(RESNET_BLOCKS):
        width = RESNET_WIDTH * 2 ** stage
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            name = f"s{stage}b{block}"
            layers.append({"op": "block", "name": name, "convs": [
                conv(f"{name}c1", c_in, width, 1), conv(f"{name}c2", width, width, 3, stride),
                conv(f"{name}c3", width, width * 4, 1, scale=0.2)],
                "down": conv(f"{name}d", c_in, width * 4, 1, stride) if block == 0 else None})
            c_in = width * 4
    fc = (rng.standard_normal((c_in, CLASSES), dtype=np.float32) / np.float32(np.sqrt(c_in)))
    layers.append({"op": "fc", "w": fc, "b": np.zeros(CLASSES, np.float32)})
    return layers


def parameter_count(layers: list[dict[str, Any]]) -> int:
    convs = [c for layer in layers for c in [layer, *(layer.get("convs") or []), layer.get("down")]
             if c is not None and "w" in c]
    return sum(c["w"].size + c["b"].size for c in convs)


def resnet_onnx(layers: list[dict[str, Any]], path: Path) -> None:
    nodes, inits, counter = [], [], iter(range(10**6))

    def conv(x: str, layer: dict[str, Any], relu: bool) -> str:
        y = f"{layer['name']}_{next(counter)}"
        inits.extend([numpy_helper.from_array(layer["w"], layer["name"] + "_w"),
                      numpy_helper.from_array(layer["b"], layer["name"] + "_b")])
        k, p = layer["w"].shape[-1], layer["pad"]
        nodes.append(helper.make_node("Conv", [x, layer["name"] + "_w", layer["name"] + "_b"], [y],
                                      kernel_shape=[k, k], strides=[layer["stride"]] * 2, pads=[p] * 4))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [y + "r"]))
            y += "r"
        return y

    x = "INPUT0"
    for layer in layers:
        if layer["op"] == "conv":
            x = conv(x, layer, relu=True)
        elif layer["op"] == "maxpool":
            nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1]))
            x = "pool"
        elif layer["op"] == "block":
            c1, c2, c3 = layer["convs"]
            y = conv(conv(conv(x, c1, True), c2, True), c3, False)
            shortcut = conv(x, layer["down"], False) if layer["down"] is not None else x
            nodes += [helper.make_node("Add", [y, shortcut], [layer["name"] + "_sum"]),
                      helper.make_node("Relu", [layer["name"] + "_sum"], [layer["name"] + "_out"])]
            x = layer["name"] + "_out"
        else:
            inits += [numpy_helper.from_array(layer["w"], "fc_w"), numpy_helper.from_array(layer["b"], "fc_b")]
            nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
                      helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
                      helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["OUTPUT0"])]
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)


def torch_twin(name: str, layers: list[dict[str, Any]], onnx_path: Path) -> Any:
    """The same model as a torch module, with the ONNX file's weights."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                       for i in onnx.load(onnx_path).graph.initializer}
            count = len(weights) // 2
            self.w = torch.nn.ParameterList([torch.nn.Parameter(weights[f"W{i}"]) for i in range(count)])
            self.b = torch.nn.ParameterList([torch.nn.Parameter(weights[f"B{i}"]) for i in range(count)])

        def forward(self, INPUT__0: torch.Tensor) -> torch.Tensor:  # noqa: N803 - Triton's tensor name
            x = INPUT__0
            for i in range(len(self.w)):
                x = x @ self.w[i] + self.b[i]
                if i < len(self.w) - 1:
                    x = torch.relu(x)
            return torch.softmax(x, dim=1)

    class ResNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.plan = layers  # the weights as tensors in each layer's "wt" and "bt"

        def forward(self, INPUT__0: torch.Tensor) -> torch.Tensor:  # noqa: N803
            def conv(x: torch.Tensor, layer: dict[str, Any]) -> torch.Tensor:
                return F.conv2d(x, layer["wt"], layer["bt"], stride=layer["stride"], padding=layer["pad"])

            x = INPUT__0
            for layer in self.plan:
                if layer["op"] == "conv":
                    x = torch.relu(conv(x, layer))
                elif layer["op"] == "maxpool":
                    x = F.max_pool2d(x, 3, 2, 1)
                elif layer["op"] == "block":
                    c1, c2, c3 = layer["convs"]
                    y = conv(torch.relu(conv(torch.relu(conv(x, c1)), c2)), c3)
                    x = torch.relu(y + (conv(x, layer["down"]) if layer["down"] is not None else x))
                else:
                    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) @ layer["wt"] + layer["bt"]
            return x

    if name != "resnet50":
        return Mlp().eval()
    for layer in layers:
        for conv_layer in [layer, *(layer.get("convs") or []), layer.get("down")]:
            if conv_layer is not None and "w" in conv_layer:
                conv_layer["wt"] = torch.from_numpy(conv_layer["w"])
                conv_layer["bt"] = torch.from_numpy(conv_layer["b"])
    return ResNet().eval()


def to_device(module: Any, device: str) -> Any:
    """The twin's tensors moved to device (the ResNet keeps them in its plan, not as parameters)."""
    if hasattr(module, "plan"):
        for layer in module.plan:
            for conv_layer in [layer, *(layer.get("convs") or []), layer.get("down")]:
                if conv_layer is not None and "wt" in conv_layer:
                    conv_layer["wt"], conv_layer["bt"] = conv_layer["wt"].to(device), conv_layer["bt"].to(device)
        return module
    return module.to(device)


def input_shape(name: str, batch: int) -> tuple[int, ...]:
    return (batch, 3, IMAGE, IMAGE) if name.startswith("resnet50") else (batch, 64)


def write_repository(root: Path, kind: str, onnx_paths: dict[str, Path], torchscript: Path | None) -> Path:
    """A Triton-layout repository of the models with every instance of `kind` (KIND_CPU or KIND_GPU)."""
    for name, path in [*onnx_paths.items(), *([("resnet50_torch", torchscript)] if torchscript else [])]:
        folder = root / name / "1"
        folder.mkdir(parents=True)
        is_torch = name.endswith("_torch")
        (folder / ("model.pt" if is_torch else "model.onnx")).symlink_to(path)
        lines = [f'name: "{name}"', f'platform: "{"pytorch_libtorch" if is_torch else "onnxruntime_onnx"}"',
                 "max_batch_size: 64", "dynamic_batching { max_queue_delay_microseconds: 500 }",
                 f"instance_group [ {{ kind: {kind} count: 1 }} ]"]
        if is_torch:
            lines += [f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, {IMAGE}, {IMAGE} ] }} ]',
                      f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]']
        if kind == "KIND_CPU" and name.startswith("resnet50"):  # a heavy model gets the cores; MLPs keep 1
            lines.append(f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{CORES}" }} }}')
        (root / name / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return root


def build_models() -> tuple[dict[str, Path], Path | None, dict[str, Any], dict[str, Any]]:
    """The ONNX files, the TorchScript ResNet, the torch twins of every model, and what was built."""
    models_dir = WORK / "models"
    paths = dict(zip(("mlp_small", "mlp_large"), write_reference_models(models_dir), strict=True))
    layers = resnet_weights(np.random.default_rng(0))
    paths["resnet50"] = models_dir / "resnet50.onnx"
    resnet_onnx(layers, paths["resnet50"])
    built = {"resnet50_parameters": parameter_count(layers), "resnet50_onnx_bytes": paths["resnet50"].stat().st_size}
    twins: dict[str, Any] = {}
    torchscript = None
    try:
        import torch
    except ImportError:
        skipped.append("torch rows and the TorchScript ResNet: torch is not installed")
    else:
        torch.set_num_threads(CORES)
        twins = {name: torch_twin(name, layers, path) for name, path in paths.items()}
        torchscript = models_dir / "resnet50.pt"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.jit.trace(twins["resnet50"], torch.zeros(input_shape("resnet50", 1))).save(str(torchscript))
    return paths, torchscript, twins, built


# -- direct calls in this process ----------------------------------------------------------------------------

def timed(call: Any, batch: int) -> dict[str, float]:
    """Median latency and rows/s of call() over CELL_S (at least MIN_CALLS calls) after the warm-up calls."""
    for _ in range(WARMUP_CALLS):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - started < CELL_S:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"p50_ms": float(np.median(times)) * 1e3, "rows_per_s": batch * len(times) / sum(times),
            "calls": len(times)}


def ort_session(path: Path, device: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    options.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime did not take the CUDA provider (it has {ort.get_available_providers()})")
    return session


def cell_s(last: dict[str, float] | None, last_batch: int, batch: int) -> float:
    """A direct cell's expected length: warm-up and timed calls at the last cell's time per row, scaled."""
    if last is None:
        return CELL_S * 4 + 2
    call_s = last["p50_ms"] / 1e3 * batch / last_batch
    return max(CELL_S, MIN_CALLS * call_s) + WARMUP_CALLS * call_s + 0.5


def direct(paths: dict[str, Path], twins: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    agreement: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    for name, path in paths.items():
        for device in DEVICES:
            try:
                session = ort_session(path, device)
            except Exception as error:  # a missing CUDA provider: say so, measure the rest
                skipped.append(f"onnxruntime {name} on {device}: {error}")
                session = None
            twin = to_device(twins[name], device) if name in twins else None
            calls: dict[str, Any] = {}
            if session is not None:
                calls["onnxruntime"] = lambda x, s=session: s.run(None, {"INPUT0": x})[0]
            if twin is not None:
                import torch

                def run_torch(x: np.ndarray, t: Any = twin, d: str = device) -> np.ndarray:
                    with torch.inference_mode():
                        return t(torch.from_numpy(x).to(d)).cpu().numpy()

                calls["torch"] = run_torch
            if len(calls) == 2:  # the two runtimes on one input, once, before any timing
                x = rng.random(input_shape(name, 4), dtype=np.float32)
                a, b = calls["onnxruntime"](x), calls["torch"](x)
                agreement.append({"model": name, "device": device, "batch": 4,
                                  "max_rel_diff": float(np.abs(a - b).max() / (np.abs(a).max() or 1))})
            for runtime, call in calls.items():
                last, last_batch = None, 1
                for batch in BATCHES:
                    if not fits(cell_s(last, last_batch, batch), f"direct {name} {runtime} {device} batch {batch}",
                                "direct"):
                        break
                    x = rng.random(input_shape(name, batch), dtype=np.float32)
                    last, last_batch = timed(lambda c=call, x=x: c(x), batch), batch
                    rows.append({"model": name, "runtime": runtime, "device": device, "batch": batch, **last})
            if twin is not None:
                to_device(twin, "cpu")
            del session
    return rows, agreement


# -- through the server --------------------------------------------------------------------------------------

class Server:
    """`infergate serve` on a free port; its address and transport from its serving line, its log in WORK."""

    def __init__(self, repository: Path, label: str, *flags: str) -> None:
        self.label = label
        self.log_path = WORK / f"serve-{label}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infergate.server", "serve", "--model-repository", str(repository),
             "--grpc-address", "127.0.0.1:0", "--metrics-address", "none", "--exit-timeout-s", "5", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        live_servers.append(self)
        deadline = time.monotonic() + min(SERVER_START_S, max(left_s() - 5, 1))
        found = None
        while time.monotonic() < deadline and self.process.poll() is None:
            found = SERVING_LINE.search(self.log_path.read_text())
            if found:
                break
            time.sleep(0.2)
        if found is None:
            self.stop()
            raise RuntimeError(f"infergate serve ({label}) did not start:\n{self.log_path.read_text()[-2000:]}")
        self.address, self.serving = found[3], f"{found[1]}/{found[2]} models; {found[4]}"
        if found[1] != found[2]:
            skipped.append(f"server {label}: only {self.serving} loaded (its log: {self.log_path.name})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
        live_servers.remove(self)


def on_stop_signal(signum: int, _frame: Any) -> None:
    """The hard limit's SIGTERM (or a Ctrl-C): the servers, in sessions of their own, go too; the report on
    disk is the one written after the last step."""
    for server in live_servers:
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"gpu.sh: stopped by signal {signum} after {time.monotonic() - STARTED:.0f} s; {OUT / 'gpu-bench.md'} "
          "holds what was measured until then", file=sys.stderr)
    os._exit(128 + signum)


def measure(address: str, model: str, batch: int, concurrency: int, processes: int = 1) -> dict[str, Any]:
    """One closed-loop point: perf_analyzer's when $PERF_ANALYZER is set, else the load harness's."""
    limit_s = max(min(POINT_S * 4 + WARMUP_S + 30, left_s()), 5)
    if PERF_ANALYZER:
        csv = WORK / "perf.csv"
        subprocess.run([PERF_ANALYZER, "-i", "grpc", "-u", address, "-m", model, "-b", str(batch),
                        "--concurrency-range", str(concurrency), "-p", str(int(POINT_S * 1000)), "-s", str(STABILITY_PCT),
                        "--max-trials", "3", "-f", str(csv)], capture_output=True, timeout=limit_s, check=True)
        header, values = csv.read_text().splitlines()[:2]
        row = dict(zip(header.split(","), values.split(","), strict=False))
        return {"client": "perf_analyzer", "rows_per_s": float(row["Inferences/Second"]),
                "p50_ms": float(row["p50 latency"]) / 1e3, "p99_ms": float(row["p99 latency"]) / 1e3, "errors": {}}
    out = WORK / f"loadgen-{model}-{batch}-{concurrency}-{time.monotonic_ns()}"
    done = subprocess.run([sys.executable, "-m", "infergate.server", "bench", "--target", address, "--model", model,
                           "--batch-size", str(batch), "--concurrency", str(concurrency), "--processes",
                           str(processes), "--duration-s", str(POINT_S), "--warmup-s", str(WARMUP_S), "--out",
                           str(out), "--no-plots", "--quiet", "--log-level", "warning"],
                          capture_output=True, text=True, timeout=limit_s, check=False)
    if not (out / "results.json").is_file():
        raise RuntimeError(f"infergate bench exited {done.returncode}: {done.stderr.strip()[-500:]}")
    (point,) = json.loads((out / "results.json").read_text())["points"]
    return {"client": "infergate bench", "rows_per_s": point["throughput_per_s"] * batch,
            "p50_ms": point["latency_ms"].get("p50"), "p99_ms": point["latency_ms"].get("p99"),
            "errors": point["errors"], "client_limited": point["client_limited"]}


def direct_rows_per_s(direct_rows: list[dict[str, Any]], model: str, device: str, batch: int) -> float | None:
    """The direct call's rows/s for a served point: the ONNX file's through onnxruntime, the TorchScript's torch."""
    name, runtime = ("resnet50", "torch") if model == "resnet50_torch" else (model, "onnxruntime")
    return next((r["rows_per_s"] for r in direct_rows
                 if (r["model"], r["runtime"], r["device"], r["batch"]) == (name, runtime, device, batch)), None)


def served(paths: dict[str, Path], torchscript: Path | None, direct_rows: list[dict[str, Any]],
           progress: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    models = [m for m in SERVED_MODELS if torchscript or not m.endswith("_torch")]
    for device in DEVICES:
        kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
        if not fits(SERVER_EXPECTED_S, f"served on {device}", "served"):
            continue
        repository = write_repository(WORK / f"repo-{device}", kind, paths, torchscript)
        try:
            server = Server(repository, device)
        except RuntimeError as error:
            skipped.append(str(error))
            continue
        try:
            for model in models:
                for batch in SERVED_BATCHES:
                    if not fits(POINT_S + WARMUP_S + POINT_OVERHEAD_S, f"served {model} {device} batch {batch}",
                                "served"):
                        continue
                    try:
                        point = measure(server.address, model, batch, SERVED_CONCURRENCY)
                    except (subprocess.SubprocessError, OSError, RuntimeError, ValueError, KeyError) as error:
                        skipped.append(f"served {model} {device} batch {batch}: {error}")
                        continue
                    alone = direct_rows_per_s(direct_rows, model, device, batch)
                    rows.append({"model": model, "device": device, "batch": batch, "concurrency": SERVED_CONCURRENCY,
                                 **point, "direct_rows_per_s": alone,
                                 "served_vs_direct": point["rows_per_s"] / alone if alone else None})
                    progress(rows)
        finally:
            server.stop()
    return rows


def frontend(paths: dict[str, Path], progress: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    repository = write_repository(WORK / "repo-frontend", "KIND_CPU", {"mlp_small": paths["mlp_small"]}, None)
    for workers in WORKERS:
        if not fits(POINT_S + WARMUP_S + POINT_OVERHEAD_S + SERVER_EXPECTED_S / 2, f"front end --workers {workers}",
                    "frontend"):
            continue
        try:
            server = Server(repository, f"workers-{workers}", "--workers", str(workers))
        except RuntimeError as error:
            skipped.append(str(error))
            continue
        try:
            rows.append({"workers": workers, "serving": server.serving, "model": "mlp_small", "batch": 1,
                         "concurrency": FRONTEND_CONCURRENCY,
                         **measure(server.address, "mlp_small", 1, FRONTEND_CONCURRENCY, CLIENT_PROCESSES)})
            progress(rows)
        except (subprocess.SubprocessError, OSError, RuntimeError, ValueError, KeyError) as error:
            skipped.append(f"front end --workers {workers}: {error}")
        finally:
            server.stop()
    return rows


# -- the report ----------------------------------------------------------------------------------------------

def host() -> dict[str, Any]:
    def run(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = dict(filter(None, (_installed(*names) for names in (
        ("torch",), ("onnxruntime-gpu", "onnxruntime"), ("numpy",), ("grpcio",), ("infergate",)))))
    import onnxruntime as ort

    cuda = None
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        pass
    return {"mode": MODE, "machine": platform.machine(), "cores": CORES, "python": platform.python_version(),
            "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), platform.processor()),
            "gpu": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
            "torch_cuda": cuda, "commit": run("git", "rev-parse", "HEAD"), "versions": versions,
            "onnxruntime_providers": ort.get_available_providers(), "perf_analyzer": PERF_ANALYZER}


def _installed(*distributions: str) -> tuple[str, str] | None:
    """(name, version) of the first of these distributions that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in distributions:
        try:
            return distribution, version(distribution)
        except PackageNotFoundError:
            continue
    return None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "0"
    return f"{value:,.2f}" if isinstance(value, float) and value < 100 else (
        f"{value:,.0f}" if isinstance(value, float) else str(value))


def table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    if not rows:
        return ["(none)"]
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows])


def speedups(direct_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GPU rows/s over CPU rows/s, per model, runtime and batch measured on both."""
    by_key = {(r["model"], r["runtime"], r["batch"], r["device"]): r["rows_per_s"] for r in direct_rows}
    return [{"model": m, "runtime": rt, "batch": b, "cpu_rows_per_s": cpu, "gpu_rows_per_s": by_key[(m, rt, b, "cuda")],
             "gpu_vs_cpu": by_key[(m, rt, b, "cuda")] / cpu}
            for (m, rt, b, d), cpu in sorted(by_key.items()) if d == "cpu" and (m, rt, b, "cuda") in by_key]


def report(doc: dict[str, Any]) -> str:
    meta = doc["host"]
    direct_rows = sorted(doc["direct"], key=lambda r: (MODELS.index(r["model"]), r["runtime"], r["device"], r["batch"]))
    lines = [f"# bench/gpu.sh ({meta['mode']}{', incomplete' if not doc['is_complete'] else ''})", "",
             f"{meta['gpu'] or 'no GPU'}; torch CUDA {meta['torch_cuda'] or '-'}; {meta['cores']} x {meta['cpu']}; "
             f"Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
             + f"; onnxruntime providers {', '.join(meta['onnxruntime_providers'])}; commit {meta['commit'][:12]}; "
             f"ran {doc['elapsed_s']:.0f} s of the {BUDGET_S:.0f} s left to it after setup", "",
             f"ResNet-50: {doc['built']['resnet50_parameters']:,} parameters, "
             f"{doc['built']['resnet50_onnx_bytes'] / 2**20:.0f} MiB of ONNX, input [batch, 3, {IMAGE}, {IMAGE}].", "",
             "## Direct calls in one process (rows/s; P50 ms per call, host-to-device copies included)", ""]
    lines += table(direct_rows, ["model", "runtime", "device", "batch", "rows_per_s", "p50_ms", "calls"])
    lines += ["", "### GPU against CPU, direct", ""]
    lines += table(speedups(doc["direct"]), ["model", "runtime", "batch", "cpu_rows_per_s", "gpu_rows_per_s",
                                             "gpu_vs_cpu"])
    lines += ["", "onnxruntime against torch on the same weights and input (batch 4, max |diff| / max |value|): "
              + ("; ".join(f"{a['model']} {a['device']} {a['max_rel_diff']:.1e}" for a in doc["agreement"]) or "-"),
              "", f"## Through infergate serve (concurrency {SERVED_CONCURRENCY}; direct: the same model and batch "
              "called in one process, one call at a time)", ""]
    lines += table(doc["served"], ["model", "device", "batch", "rows_per_s", "p50_ms", "p99_ms", "direct_rows_per_s",
                                   "served_vs_direct", "errors", "client_limited", "client"])
    lines += ["", f"## Front end: mlp_small batch 1, concurrency {FRONTEND_CONCURRENCY}, "
              f"{CLIENT_PROCESSES} client process(es), against --workers", ""]
    lines += table(doc["frontend"], ["workers", "serving", "rows_per_s", "p50_ms", "p99_ms", "errors",
                                     "client_limited", "client"])
    if doc["skipped"]:
        lines += ["", "## Skipped", "", *[f"- {line}" for line in doc["skipped"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)
    doc: dict[str, Any] = {
        "host": host(), "budget_s": BUDGET_S, "elapsed_s": 0.0, "is_complete": False,
        "settings": {"batches": BATCHES, "served_batches": SERVED_BATCHES, "served_concurrency": SERVED_CONCURRENCY,
                     "workers": WORKERS, "frontend_concurrency": FRONTEND_CONCURRENCY,
                     "client_processes": CLIENT_PROCESSES, "cell_s": CELL_S, "point_s": POINT_S,
                     "warmup_s": WARMUP_S, "part_ends": PART_ENDS,
                     "resnet": {"blocks": RESNET_BLOCKS, "width": RESNET_WIDTH, "image": IMAGE, "classes": CLASSES}},
        "built": {}, "direct": [], "agreement": [], "served": [], "frontend": [], "skipped": skipped}

    def write(**parts: Any) -> None:  # after each step: a run killed at its hard limit keeps what it measured
        doc.update(parts, elapsed_s=time.monotonic() - STARTED)
        (OUT / "gpu-bench.json").write_text(json.dumps(doc, indent=1) + "\n")
        (OUT / "gpu-bench.md").write_text(report(doc))

    paths, torchscript, twins, built = build_models()
    write(built=built)
    direct_rows, agreement = direct(paths, twins)
    write(direct=direct_rows, agreement=agreement)
    served(paths, torchscript, direct_rows, lambda rows: write(served=rows))
    frontend(paths, lambda rows: write(frontend=rows))
    write(is_complete=True)
    print(report(doc))
    print(f"wrote {OUT / 'gpu-bench.md'} and {OUT / 'gpu-bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
PY
left_s=$((budget_s - SECONDS))
if [ "$left_s" -lt 30 ]; then
  echo "gpu.sh: only ${left_s} s of BUDGET_S=${budget_s} left after the checks and install; nothing measured" >&2
  exit 1
fi
GPU_BENCH_LEFT_S=$left_s timeout --kill-after=5 $((hard_limit_s - SECONDS)) "$python" "$script" "$mode" "$out" "$work"
