#!/usr/bin/env bash
# Issue 14's rows that session 6 changed, before and after, in one campaign: B at 5000
# paced streams opened in one second (with granian and the raw reference in the same run)
# and the cost of a new stream (in process, and over sockets with the raw reference).
# (C, idle memory, does not depend on CPU share: its before/after is its own section.)  The "before" tree is measured with streamcore's
# peers only (the raw reference in every run says how loaded the machine was); the
# "after" run has the peers too.  From the repository root:
#   bash benchmarks/campaign-session6.sh [AFTER [BEFORE]]
# Writes benchmarks/out/s6-STEP-{before,after}.{json,log} and s6-newstream.log.
set -u
AFTER=$(git rev-parse "${1:-HEAD}")
BEFORE=$(git rev-parse "${2:-08cd910}")
R="python benchmarks/run.py --runs 3 --retry-loaded 1 --wait-quiet 5"
mkdir -p benchmarks/out
step() {
    name=$1; before_servers=$2; after_servers=$3; shift 3
    $R --streamcore-ref "$BEFORE" --servers "$before_servers" "$@" \
        --out "benchmarks/out/s6-$name-before.json" > "benchmarks/out/s6-$name-before.log" 2>&1
    $R --streamcore-ref "$AFTER" --servers "$after_servers" "$@" \
        --out "benchmarks/out/s6-$name-after.json" > "benchmarks/out/s6-$name-after.log" 2>&1
}
ours=streamcore,streamcore_user,raw_asyncio
# 40 tokens (2 s) per stream, not 200: at 5000 x 20 tokens/s this VM is saturated for every
# Python server (a 200-token run took over a minute); TTFB p99, what the new-stream work
# changes, is decided by the ramp.
step B-5000 "$ours" "$ours,granian" --workloads B --paced-streams 5000 --ramp 1 --paced-tokens 40
{
    for tree in "$BEFORE" "$AFTER"; do
        dir=$(mktemp -d); git archive "$tree" streamcore | tar -x -C "$dir"
        mkdir "$dir/benchmarks"; cp benchmarks/new_stream.py "$dir/benchmarks/"  # one harness
        for flag in "" --user; do
            echo "== $tree new_stream.py $flag"
            (cd "$dir" && PYTHONPATH="$dir" taskset -c 0 python benchmarks/new_stream.py -n 5000 $flag)
        done
        rm -rf "$dir"
    done
    for round in 1 2 3; do  # sockets, kernel included: the working tree against raw
        for server in streamcore raw; do bash benchmarks/cost.sh churn $server 16 6 | tail -1; done
    done
} > benchmarks/out/s6-newstream.log 2>&1
echo done > benchmarks/out/s6.done
