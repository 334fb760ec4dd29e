#!/usr/bin/env bash
# Session 7, the gateway's time to first token (issue 9): the working tree's gateway and a
# baseline commit's side by side with the upstream direct and nginx, at 1 stream, 100 (burst
# and spread arrivals) and 1000 (both); then CPU per request and calls per request.  From
# the repository root:
#   bash benchmarks/campaign-session7-gateway.sh BASELINE_REF
# Writes benchmarks/out/s7-*.{json,log}.
set -u
BASE=${1:?baseline ref}
G="python benchmarks/gateway.py --parts latency --fronts direct,streamcore,nginx \
   --baseline-ref $BASE --runs 3 --retry-loaded 0 --wait-quiet 3 --upstream-pool-size 1024"
mkdir -p benchmarks/out
$G --concurrency 1,100 --repeat 1:4,100:3 --out benchmarks/out/s7-latency-100.json \
    > benchmarks/out/s7-latency-100.log 2>&1
$G --concurrency 1000 --repeat 1000:1 --slack 60 --out benchmarks/out/s7-latency-1000.json \
    > benchmarks/out/s7-latency-1000.log 2>&1
bash benchmarks/cost-gateway-request.sh "$BASE" 3 > benchmarks/out/s7-cost.log 2>&1
python benchmarks/gateway_calls.py --baseline-ref "$BASE" > benchmarks/out/s7-calls.log 2>&1
