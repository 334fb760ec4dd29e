#!/usr/bin/env bash
# The measurement campaign behind RESULTS.md: bash benchmarks/campaign.sh (from the repo root).
# About an hour on 2 cores; each step writes benchmarks/out/STEP.json and STEP.log.
set -u
R="python benchmarks/run.py --runs 3 --retry-loaded 2 --wait-quiet 20"
$R --workloads A --concurrency 64 --out benchmarks/out/A-c64.json      > benchmarks/out/A-c64.log 2>&1
$R --workloads B --paced-streams 1000 --out benchmarks/out/B-1000.json > benchmarks/out/B-1000.log 2>&1
$R --workloads C --idle-streams 10000 --out benchmarks/out/C.json      > benchmarks/out/C.log 2>&1
$R --workloads D --slow-clients 100 --out benchmarks/out/D.json         > benchmarks/out/D.log 2>&1
$R --workloads A --concurrency 1,512 --out benchmarks/out/A-c1-512.json > benchmarks/out/A-c1-512.log 2>&1
$R --workloads B --paced-streams 5000 --out benchmarks/out/B-5000.json > benchmarks/out/B-5000.log 2>&1
echo CAMPAIGN DONE > benchmarks/out/campaign.done
