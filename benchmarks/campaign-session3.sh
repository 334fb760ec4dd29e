#!/usr/bin/env bash
# The re-measurement after the paced-path work (session 3): bash benchmarks/campaign-session3.sh
# from the repository root; about 40 minutes on 2 cores.  Each step writes
# benchmarks/out/s3-STEP.json and .log.  BEFORE is the tree those changes started from.
set -u
REF=$(git rev-parse "${1:-HEAD}")
BEFORE=$(git rev-parse "${2:-36aa1f1}")
R="python benchmarks/run.py --runs 3 --retry-loaded 1 --wait-quiet 10"
step() { name=$1; shift; $R "$@" --out "benchmarks/out/s3-$name.json" > "benchmarks/out/s3-$name.log" 2>&1; }
step B-5000-before --streamcore-ref "$BEFORE" --servers streamcore --workloads B --paced-streams 5000
step B-5000 --streamcore-ref "$REF" --servers streamcore,raw_asyncio,granian,uvicorn_asgi,picows \
     --workloads B --paced-streams 5000
step B-1000 --streamcore-ref "$REF" --servers streamcore,raw_asyncio,granian,uvicorn_asgi,picows \
     --workloads B --paced-streams 1000
step A-c64 --streamcore-ref "$REF" --servers streamcore,raw_asyncio,fastapi_sse,granian,picows \
     --workloads A --concurrency 64
step D-100 --streamcore-ref "$REF" --servers streamcore,raw_asyncio,uvicorn_asgi \
     --workloads D --slow-clients 100
step C-10000 --streamcore-ref "$REF" --servers streamcore,raw_asyncio,uvicorn_asgi \
     --workloads C --idle-streams 10000
echo done > benchmarks/out/s3.done
