#!/usr/bin/env bash
# The lead's session-7 campaign, on a quiet machine, before (the session's start) and after
# in one run each: B at 5000 paced streams opened in one second (SSE and WebSocket, granian
# and the raw reference in the after run), idle WebSocket memory (C, 2000), the cost of a new
# stream (in process, both trees interleaved in one process; over sockets, alternating with
# the raw reference), and the gateway at 100 streams (burst and spread arrivals) and its CPU
# per relayed token.  From the repository root:
#   bash benchmarks/campaign-session7.sh [BEFORE]
# Writes benchmarks/out/s7l-*.{json,log}.
set -u
BEFORE=$(git rev-parse "${1:-ba47887}")
R="python benchmarks/run.py --runs 3 --retry-loaded 1 --wait-quiet 5"
mkdir -p benchmarks/out
out=benchmarks/out/s7l
step() {
    name=$1; before_servers=$2; after_servers=$3; shift 3
    $R --streamcore-ref "$BEFORE" --servers "$before_servers" "$@" \
        --out "$out-$name-before.json" > "$out-$name-before.log" 2>&1
    $R --servers "$after_servers" "$@" --out "$out-$name-after.json" > "$out-$name-after.log" 2>&1
}
ours=streamcore,streamcore_user
# 40 tokens (2 s) per stream: 5000 x 20 tokens/s saturates this VM for every Python server.
step B-5000 "$ours" "$ours,raw_asyncio,granian" --workloads B --paced-streams 5000 --ramp 1 \
    --paced-tokens 40
step C-2000 "$ours" "$ours,raw_asyncio" --workloads C --idle-streams 2000 --protos ws
{
    before=$(mktemp -d); git archive "$BEFORE" streamcore | tar -x -C "$before"
    for flag in "" --user; do
        taskset -c 0 python benchmarks/new_stream_ab.py $flag "$before" .
    done
    rm -rf "$before"
    for round in 1 2 3; do  # over sockets, kernel included: this tree and raw, alternating
        for server in streamcore raw; do bash benchmarks/cost.sh churn $server 16 6 | tail -1; done
    done
} > "$out-newstream.log" 2>&1
G="python benchmarks/gateway.py --fronts direct,streamcore,nginx --baseline-ref $BEFORE \
   --runs 3 --retry-loaded 1 --wait-quiet 3 --upstream-pool-size 1024"
$G --parts latency --concurrency 100 --repeat 100:3 --out "$out-gateway-100.json" \
    > "$out-gateway-100.log" 2>&1
$G --parts cpu --out "$out-gateway-cpu.json" > "$out-gateway-cpu.log" 2>&1
echo done > "$out.done"
