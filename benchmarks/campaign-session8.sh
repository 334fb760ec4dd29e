#!/usr/bin/env bash
# The lead's session-8 campaign, on a quiet machine: every row of issue 14's table measured
# again, one run.py invocation per workload and tree, *before* being the tree when the issue's
# work began (62f603e) and *after* the working tree, with the peers in the after run (median
# of 3 runs each); the cost of a new stream (in process, interleaved with the session's
# start; over sockets, alternating with the raw reference); the gateway at 100 streams and
# its CPU per relayed token against the session's start.  From the repository root:
#   bash benchmarks/campaign-session8.sh [ISSUE_START [SESSION_START]]
# Writes benchmarks/out/s8-*.{json,log}; takes about 45 minutes.
set -u
BEFORE=$(git rev-parse "${1:-62f603e}")
SESSION=$(git rev-parse "${2:-161b868}")
R="python benchmarks/run.py --runs 3 --retry-loaded 1 --wait-quiet 5"
mkdir -p benchmarks/out
out=benchmarks/out/s8
step() {
    name=$1; after_servers=$2; shift 2
    $R --streamcore-ref "$BEFORE" --servers streamcore,streamcore_user "$@" \
        --out "$out-$name-before.json" > "$out-$name-before.log" 2>&1
    $R --servers "streamcore,streamcore_user,$after_servers" "$@" \
        --out "$out-$name-after.json" > "$out-$name-after.log" 2>&1
}
{
    start=$(mktemp -d); git archive "$SESSION" streamcore | tar -x -C "$start"
    for flag in "" --user; do
        taskset -c 0 python benchmarks/new_stream_ab.py $flag "$start" .
    done
    rm -rf "$start"
    for round in 1 2 3; do  # over sockets, kernel included: this tree and raw, alternating
        for server in streamcore raw; do bash benchmarks/cost.sh churn $server 16 6 | tail -1; done
    done
} > "$out-newstream.log" 2>&1
# 40 tokens (2 s) per stream: 5000 x 20 tokens/s saturates this VM for every Python server.
step B-5000 raw_asyncio,granian --workloads B --paced-streams 5000 --ramp 1 --paced-tokens 40
step A-64 raw_asyncio,granian,aiohttp,fastapi_sse,picows,websockets --workloads A \
    --concurrency 64
# 100 tokens (5 s) per stream rather than the default 200, to keep the campaign short.
step B-1000 raw_asyncio,granian,uvicorn_asgi --workloads B --paced-streams 1000 \
    --paced-tokens 100
step C-2000 raw_asyncio,uvicorn_asgi --workloads C --idle-streams 2000
step D-20 raw_asyncio,uvicorn_asgi --workloads D --slow-clients 20 --protos sse
G="python benchmarks/gateway.py --fronts direct,streamcore,nginx --baseline-ref $SESSION \
   --runs 3 --retry-loaded 1 --wait-quiet 3 --upstream-pool-size 1024"
$G --parts latency --concurrency 100 --repeat 100:3 --out "$out-gateway-100.json" \
    > "$out-gateway-100.log" 2>&1
$G --parts cpu --out "$out-gateway-cpu.json" > "$out-gateway-cpu.log" 2>&1
echo done > "$out.done"
