#!/usr/bin/env bash
# Runs Seldon MLServer 1.7.1 on 127.0.0.1 serving the reference models (mlp_small, mlp_large) with
# onnxruntime (onnx_runtime.py) and adaptive batching, for side-by-side benchmarks. It stops by itself
# after SERVE_SECONDS.
#   run.sh MODELS_DIR [WORKDIR]
# MODELS_DIR holds mlp_small.onnx and mlp_large.onnx (python -m infergate.bench.reference_models DIR).
# WORKDIR (the venv, the model settings, server.log, server.pid) defaults to <bench cache>/mlserver, the
# cache being $INFERGATE_BENCH_CACHE, else $INFERGATE_CACHE_DIR/bench, else ${XDG_CACHE_HOME:-~/.cache}/infergate/bench.
# Ports: gRPC 8081, HTTP 8090, metrics 8092. Stop with: kill "$(cat WORKDIR/server.pid)".
# Knobs: PARALLEL_WORKERS (0 = in-process, its fastest setting on 2 cores; MLServer's default is 1),
# MAX_BATCH (64), MAX_BATCH_TIME_S (0.001), SERVE_SECONDS (1800).
# Stock perf_analyzer aborts against MLServer (no ModelConfig RPC), so the server is started through
# modelconfig_shim.py, which adds that one RPC and changes nothing else.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${INFERGATE_BENCH_CACHE:-${INFERGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infergate}/bench}
models=$(cd "$1" && pwd); work=${2:-$cache/mlserver}
mkdir -p "$work/repo"
if [ ! -x "$work/venv/bin/mlserver" ]; then
  python3 -m venv "$work/venv"
  # uvloop 0.23 crash-loops MLServer's parallel worker ("no current event loop"), so it is pinned below 0.22.
  "$work/venv/bin/pip" install -q mlserver==1.7.1 'uvloop<0.22' onnxruntime numpy 'tritonclient[grpc]==2.73.0'
fi
cat > "$work/repo/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "grpc_port": 8081, "http_port": 8090, "metrics_port": 8092,
 "parallel_workers": ${PARALLEL_WORKERS:-0}, "load_models_at_startup": true}
JSON
for m in mlp_small mlp_large; do
  mkdir -p "$work/repo/$m"
  cat > "$work/repo/$m/model-settings.json" <<JSON
{"name": "$m", "implementation": "onnx_runtime.OnnxModel", "platform": "onnxruntime_onnx",
 "max_batch_size": ${MAX_BATCH:-64}, "max_batch_time": ${MAX_BATCH_TIME_S:-0.001},
 "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}],
 "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 10]}],
 "parameters": {"uri": "$models/$m.onnx", "version": "1", "extra": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}}
JSON
done
cd "$work/repo"
# PYTHONPATH: MLServer imports the runtime named in model-settings.json ("onnx_runtime.OnnxModel") from here.
PYTHONPATH=$here timeout "${SERVE_SECONDS:-1800}" "$work/venv/bin/python" "$here/modelconfig_shim.py" "$work/repo" > "$work/server.log" 2>&1 &
echo $! > "$work/server.pid"
for _ in $(seq 120); do
  if "$work/venv/bin/python" -c "import tritonclient.grpc as g,sys; c=g.InferenceServerClient('127.0.0.1:8081'); sys.exit(0 if c.is_model_ready('mlp_small') and c.is_model_ready('mlp_large') else 1)" 2>/dev/null; then
    echo "MLServer ready on 127.0.0.1:8081 (pid $(cat "$work/server.pid"))"; exit 0
  fi
  # A model that fails to load makes MLServer exit: say so now rather than after a minute of polling.
  kill -0 "$(cat "$work/server.pid")" 2>/dev/null || { echo "MLServer exited"; tail -20 "$work/server.log"; exit 1; }
  sleep 0.5
done
echo "MLServer did not become ready; log: $work/server.log"; tail -20 "$work/server.log"; exit 1
