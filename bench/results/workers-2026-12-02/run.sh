set -u
PA=$HOME/.cache/infergate/bench/perf_analyzer/perf_analyzer
out=bench/results/workers-2026-12-02
repo=$(python -m infergate.server example-repository 2>/dev/null | tail -1)
for round in 1 2; do
 for w in 1 2; do
  python -m infergate.server serve --model-repository "$repo" --grpc-address 127.0.0.1:18001 --metrics-address none --workers $w > /tmp/fwd-$w.log 2>&1 &
  pid=$!
  for i in $(seq 100); do grep -q "gRPC on" /tmp/fwd-$w.log && break; sleep 0.2; done
  timeout 60 $PA -m identity -i grpc -u 127.0.0.1:18001 --shape INPUT0:1,64 --concurrency-range 16 --measurement-interval 4000 -f $out/workers$w-round$round.csv > $out/workers$w-round$round.txt 2>&1
  kill -TERM $pid; wait $pid
  grep -E "Throughput|p99|Avg latency" $out/workers$w-round$round.txt | sed "s/^/w=$w r=$round /"
 done
done
