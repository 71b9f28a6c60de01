#!/usr/bin/env bash
# GPU node check, run from a checkout on a machine with an NVIDIA GPU and a CUDA build of torch:
# installs infergate into that Python, runs the serving tests (TorchScript models, whose instance
# groups default to KIND_AUTO, run on cuda:0), then perf_analyzer against the example repository
# served with the GPU visible and hidden (CUDA_VISIBLE_DEVICES=""), so the two rows compare on one node.
# Usage: PERF_ANALYZER=/path/to/perf_analyzer bench/gpu_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/infergate-gpu-check}}
mkdir -p "$out"
python=${PYTHON:-python3}
pa=${PERF_ANALYZER:-perf_analyzer}
measure_ms=2000  # perf_analyzer window per measurement

$python -m pip install -q --no-deps --no-build-isolation --no-index . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$python -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'onnxruntime', o.__version__, o.get_available_providers())" | tee -a "$out/gpu.txt"

# The tests' own filterwarnings=error is for CI's pinned versions; here other versions may warn.
$python -m pytest -q -p no:cacheprovider -o filterwarnings=ignore::DeprecationWarning \
  tests/server/test_infer.py tests/server/test_features.py tests/telemetry tests/models 2>&1 | tail -15 | tee "$out/pytest.txt"

serve_and_measure() {  # $1: label; the environment decides whether CUDA is visible
  local label=$1 log="$out/serve-$1.log"
  $python -m infergate.server serve --grpc-address 127.0.0.1:8001 --metrics-address 127.0.0.1:8002 >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 180); do grep -q "gRPC on" "$log" && break; sleep 1; done
  grep -E "loaded model|batches run" "$log"
  for model in digits_large digits_small; do
    for c in 1 16 64; do
      echo "== $label $model concurrency $c" | tee -a "$out/perf_analyzer.txt"
      timeout 90 "$pa" -i grpc -u 127.0.0.1:8001 -m "$model" --concurrency-range "$c" -p "$measure_ms" -s 25 \
        >>"$out/perf_analyzer.txt" 2>&1
      grep -E "^Concurrency: $c," "$out/perf_analyzer.txt" | tail -1
    done
  done
  # Telemetry under load: NVML gauges and the stats table while digits_large runs at c=64.
  timeout 60 "$pa" -i grpc -u 127.0.0.1:8001 -m digits_large --concurrency-range 64 -p "$measure_ms" -s 25 \
    >/dev/null 2>&1 &
  local load=$!
  sleep 4
  $python -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8002/metrics').read().decode())" \
    | grep -E "^infergate_(gpu|cost|busy|model_state)" >"$out/metrics-$label.txt"
  $python -m infergate.server stats --address 127.0.0.1:8002 >"$out/stats-$label.txt" 2>&1
  wait "$load"
  cat "$out/metrics-$label.txt" "$out/stats-$label.txt"
  kill -TERM "$pid"; wait "$pid"
}

serve_and_measure gpu
CUDA_VISIBLE_DEVICES="" serve_and_measure cpu
