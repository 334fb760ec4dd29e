#!/usr/bin/env bash
# CPU per request of the streamcore gateway, against serving the synthetic model directly:
# 16 connections requesting 1-token streams back to back for 8 s (unpaced upstream on
# CPU 0 with the load generator; the server measured on CPU 1), rounds alternating.
#   bash benchmarks/cost-gateway-request.sh [BASELINE_REF] [ROUNDS]
# With BASELINE_REF (e.g. a commit before a change) its gateway is measured too.
set -eu
PY=$(python -c 'import sys; print(sys.executable)')
REF=${1:-}; ROUNDS=${2:-3}
UP=18721; PORT=18722
BASE=""
if [ -n "$REF" ]; then
    BASE=$(mktemp -d); git archive "$REF" streamcore | tar -x -C "$BASE"
fi
taskset -c 0 $PY -m streamcore serve --port $UP --token-rate 0 --log-level warning & UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null; [ -n "$BASE" ] && rm -rf "$BASE"' EXIT
ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return; sleep 0.2; done; }
ready $UP
measure() {  # name, cwd, args...
    local name=$1 dir=$2; shift 2
    (cd "$dir" && exec taskset -c 1 $PY -m streamcore serve --port $PORT --log-level warning "$@") \
        > /dev/null 2>&1 & local srv=$!
    ready $PORT
    taskset -c 0 $PY benchmarks/loadgen.py throughput --port $PORT -c 16 -t 1 -d 2 > /dev/null  # warm-up
    local before; before=$(awk '{print $14+$15}' /proc/$srv/stat)
    local out; out=$(taskset -c 0 $PY benchmarks/loadgen.py throughput --port $PORT -c 16 -t 1 -d 8)
    local after; after=$(awk '{print $14+$15}' /proc/$srv/stat)
    kill $srv; wait $srv 2>/dev/null || true
    $PY - "$name" "$before" "$after" "$out" <<'PY'
import json, os, sys
name, a, b, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
cpu = (b - a) / os.sysconf("SC_CLK_TCK")
n = out["streams_done"]
print(f"{name:12s} {n:6d} streams, {out['streams_valid']} valid, CPU {cpu:5.2f} s: "
      f"{cpu / max(1, n) * 1e6:6.0f} us/request; TTFT p50 {out['ttft_s']['p50'] * 1e3:.2f} ms "
      f"p99 {out['ttft_s']['p99'] * 1e3:.2f} ms", flush=True)
PY
}
SPEC="http://127.0.0.1:$UP/v1 models=synthetic"
for r in $(seq "$ROUNDS"); do
    echo "-- round $r"
    measure synthetic "$PWD" --token-rate 0
    measure gateway "$PWD" --upstream "$SPEC" --upstream-pool-size 1024
    [ -n "$BASE" ] && measure baseline "$BASE" --upstream "$SPEC" --upstream-pool-size 1024
done
