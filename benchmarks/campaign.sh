#!/usr/bin/env bash
# The measurement campaign behind RESULTS.md: bash benchmarks/campaign.sh [REF] (from the
# repository root).  About an hour on 2 cores; each step writes benchmarks/out/STEP.json and
# STEP.log; `python benchmarks/report.py benchmarks/out/{A,B,C,D}-*.json --plots benchmarks/`
# makes the tables and plots.  streamcore is measured as of REF (default HEAD, resolved once).
set -u
REF=$(git rev-parse "${1:-HEAD}")
R="python benchmarks/run.py --runs 3 --retry-loaded 2 --wait-quiet 15 --streamcore-ref $REF"
step() { name=$1; shift; $R "$@" --out "benchmarks/out/$name.json" > "benchmarks/out/$name.log" 2>&1; }
step A-c64    --workloads A --concurrency 64
step B-1000   --workloads B --paced-streams 1000
step C-10000  --workloads C --idle-streams 10000
step D-100    --workloads D --slow-clients 100
step B-5000   --workloads B --paced-streams 5000
step A-c1-512 --workloads A --concurrency 1,512
echo done > benchmarks/out/campaign.done
