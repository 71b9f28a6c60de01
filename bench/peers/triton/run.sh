#!/usr/bin/env bash
# Runs NVIDIA Triton Inference Server 2.51 (the tritonserver binary that the PyPI package nvidia-pytriton
# bundles, started directly, without PyTriton's proxy) on 127.0.0.1, serving the reference models through
# Triton's python backend with onnxruntime inside (the bundle has no onnxruntime backend). Dynamic
# batching: 64 rows, 500 us. It stops by itself after SERVE_SECONDS.
#   run.sh MODELS_DIR [WORKDIR]
# MODELS_DIR holds mlp_small.onnx and mlp_large.onnx (python -m infergate.bench.reference_models DIR).
# WORKDIR (the venv, the model repository, server.log, server.pid) defaults to <bench cache>/triton, the
# cache being $INFERGATE_BENCH_CACHE, else $INFERGATE_CACHE_DIR/bench, else ${XDG_CACHE_HOME:-~/.cache}/infergate/bench.
# Ports: gRPC 8001, HTTP 8000, metrics 8003 (8002 is left for the server under test).
# Stop with: kill -INT "$(cat WORKDIR/server.pid)".
# Knobs: GRPC_PORT (8001), HTTP_PORT (8000), METRICS_PORT (8003), MAX_QUEUE_DELAY_US (500), INSTANCES (1),
# ORT_THREADS (1), SERVE_SECONDS (1800).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${INFERGATE_BENCH_CACHE:-${INFERGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infergate}/bench}
models=$(cd "$1" && pwd); work=${2:-$cache/triton}
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q nvidia-pytriton==0.7.0 onnxruntime 'tritonclient[grpc]==2.73.0'
fi
sp=$("$work/venv/bin/python" -c "import site; print(site.getsitepackages()[0])")
ts=$sp/pytriton/tritonserver
pyver=$("$work/venv/bin/python" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
# Backend folder: the python backend library plus the stub built for this Python version.
rm -rf "$work/backends" "$work/repo"; mkdir -p "$work/backends/python"
cp "$ts/backends/python/libtriton_python.so" "$ts/backends/python/triton_python_backend_utils.py" "$work/backends/python/"
cp "$ts/python_backend_stubs/$pyver/triton_python_backend_stub" "$work/backends/python/"
for m in mlp_small mlp_large; do
  mkdir -p "$work/repo/$m/1"; cp "$here/model.py" "$work/repo/$m/1/model.py"
  cat > "$work/repo/$m/config.pbtxt" <<PBTXT
name: "$m"
backend: "python"
max_batch_size: 64
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: ${INSTANCES:-1}, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: ${MAX_QUEUE_DELAY_US:-500} }
PBTXT
done
# The stub embeds the Python found first on PATH (so put the venv first), and must load the same
# libpython that venv was built from (a Debian libpython of another patch level breaks it).
libdir=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
export LD_LIBRARY_PATH=$libdir:$sp/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$work/venv/bin:$PATH ANCHOR_MODELS_DIR=$models ORT_THREADS=${ORT_THREADS:-1}
# setsid: its own session, so the server outlives this script and a Ctrl-C in the caller's terminal does not
# reach it; it stops through server.pid or after SERVE_SECONDS.
# The shm prefix carries this shell's pid so that two Tritons never share python-backend regions.
setsid timeout "${SERVE_SECONDS:-1800}" "$ts/bin/tritonserver" \
  --model-repository "$work/repo" --backend-directory "$work/backends" \
  --grpc-address 127.0.0.1 --grpc-port "${GRPC_PORT:-8001}" \
  --http-address 127.0.0.1 --http-port "${HTTP_PORT:-8000}" \
  --metrics-address 127.0.0.1 --metrics-port "${METRICS_PORT:-8003}" --allow-gpu-metrics false \
  --backend-config python,shm-region-prefix-name=anchor$$ \
  --exit-timeout-secs 10 --log-verbose 0 > "$work/server.log" 2>&1 &
echo $! > "$work/server.pid"
for _ in $(seq 90); do
  grep -q "Started GRPCInferenceService" "$work/server.log" && { echo "Triton ready on 127.0.0.1:${GRPC_PORT:-8001} (pid $(cat "$work/server.pid"))"; exit 0; }
  kill -0 "$(cat "$work/server.pid")" 2>/dev/null || { echo "tritonserver exited"; tail -20 "$work/server.log"; exit 1; }
  sleep 1
done
echo "Triton not ready in 90 s; log: $work/server.log"; exit 1
