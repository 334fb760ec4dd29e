#!/usr/bin/env bash
# Before/after the architecture change (issue 8), in one campaign: A (SSE and WS, 64
# streams), B at 1000 paced streams and C at 5000 idle streams, each measured on the tree
# before the change and on the tree after it, alternating, with the raw asyncio reference
# in every run (its figures show how loaded the machine was).  From the repository root:
#   bash benchmarks/campaign-arch.sh [AFTER [BEFORE]]
# Each step writes benchmarks/out/arch-STEP-{before,after}.json and .log.
set -u
AFTER=$(git rev-parse "${1:-HEAD}")
BEFORE=$(git rev-parse "${2:-35a44ef}")
R="python benchmarks/run.py --runs 3"
mkdir -p benchmarks/out
step() {
    name=$1; shift
    for which in before after; do
        ref=$BEFORE; [ "$which" = after ] && ref=$AFTER
        $R --streamcore-ref "$ref" "$@" --out "benchmarks/out/arch-$name-$which.json" \
            > "benchmarks/out/arch-$name-$which.log" 2>&1
    done
}
step A-c64 --servers streamcore,raw_asyncio --workloads A --concurrency 64
step B-1000 --servers streamcore,raw_asyncio --workloads B --paced-streams 1000
step C-5000 --servers streamcore,raw_asyncio --workloads C --idle-streams 5000
echo done > benchmarks/out/arch.done
