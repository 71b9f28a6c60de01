#!/bin/bash
# usage: prof.sh MODEL CONC  -> py-spy of the native server under perf_analyzer
M=$1; C=$2
REPO=/work/main/bench/work/infergate-repo
/work/main/.venv/bin/infergate serve --model-repository $REPO --grpc-address 127.0.0.1:18001 --metrics-address none > /tmp/prof.log 2>&1 &
SP=$!
for i in $(seq 50); do grep -q "gRPC on" /tmp/prof.log && break; sleep 0.2; done
timeout 40 /work/bench-cache/perf_analyzer/perf_analyzer -i grpc -u 127.0.0.1:18001 -m $M --concurrency-range $C -p 3000 --max-trials 5 > /tmp/prof.pa 2>&1 &
PA=$!
sleep 3
timeout 20 /work/main/.venv/bin/py-spy record -p $SP -d 8 -r 200 -f raw -o /tmp/prof.raw --nonblocking > /dev/null 2>&1
wait $PA; grep -E "Concurrency: $C" /tmp/prof.pa | tail -1
kill -INT $SP; wait $SP 2>/dev/null
