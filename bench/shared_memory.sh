#!/usr/bin/env bash
# System shared memory against plain gRPC tensors, same run: perf_analyzer on mlp_large with batch-32 requests
# (an 8 KiB input and a 1.25 KiB output each), the two modes alternated ROUNDS times on one server.
#   bash bench/shared_memory.sh OUT_DIR      (PERF_ANALYZER, CONCURRENCY=4, ROUNDS=2, WINDOW_MS=5000 to change)
# Bounded: each perf_analyzer run has a 90 s timeout, the server is stopped by its pid at the end.
set -euo pipefail
out=${1:?usage: bash bench/shared_memory.sh OUT_DIR}
pa=${PERF_ANALYZER:-$HOME/.cache/infergate/bench/perf_analyzer/perf_analyzer}
concurrency=${CONCURRENCY:-4}
rounds=${ROUNDS:-2}
window_ms=${WINDOW_MS:-5000}
mkdir -p "$out"
repo=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$repo"
}
trap cleanup EXIT

python -m infergate.bench.reference_models "$repo/files" > /dev/null
mkdir -p "$repo/mlp_large/1"
mv "$repo/files/mlp_large.onnx" "$repo/mlp_large/1/model.onnx"
rm -rf "$repo/files"
# The same config.pbtxt as the side-by-side comparison serves it with (bench/perf_compare.py).
python -c 'from infergate.bench.perf_compare import _CONFIG_PBTXT as c; print(c.format(name="mlp_large", out_dim=10))' \
  > "$repo/mlp_large/config.pbtxt"

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m infergate.server serve --model-repository "$repo" --grpc-address "127.0.0.1:$port" \
  --metrics-address none > "$out/server.log" 2>&1 &
server=$!
for _ in $(seq 150); do grep -q "gRPC on" "$out/server.log" && break; sleep 0.2; done
grep -q "gRPC on" "$out/server.log" || { echo "the server did not start; see $out/server.log" >&2; exit 1; }

{ echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)";
  echo "uptime before: $(uptime)"; echo "perf_analyzer: $("$pa" --version 2>&1 | head -1)";
  echo "model mlp_large, batch 32, concurrency $concurrency, windows of $window_ms ms, $rounds rounds"; } \
  > "$out/host.txt"
for round in $(seq "$rounds"); do
  for mode in none system; do
    name=$mode-round$round
    # Output region: 32 rows x 10 FP32 = 1,280 bytes.
    timeout 90 "$pa" -m mlp_large -i grpc -u "127.0.0.1:$port" -b 32 --shape INPUT0:64 \
      --concurrency-range "$concurrency" --measurement-interval "$window_ms" --shared-memory "$mode" \
      --output-shared-memory-size 1280 -f "$out/$name.csv" > "$out/$name.txt" 2>&1 \
      || echo "perf_analyzer exit $? for $name (see $out/$name.txt)" >&2
    echo "$name: $(grep -E 'Throughput:' "$out/$name.txt" | tail -1 | xargs) $(grep -E 'p99 latency' "$out/$name.txt" \
      | tail -1 | xargs)"
  done
done | tee "$out/summary.txt"
echo "uptime after: $(uptime)" >> "$out/host.txt"
