#!/usr/bin/env bash
# The gateway overhead measurements behind RESULTS.md, "Gateway overhead (issue 9)":
#   bash benchmarks/campaign-gateway.sh          (from the repository root; ~30 min on 2 cores)
# LiteLLM is measured when benchmarks/out/litellm-venv has it:
#   python -m venv benchmarks/out/litellm-venv && benchmarks/out/litellm-venv/bin/pip install 'litellm[proxy]'
# Each step writes benchmarks/out/gw-STEP.json and .log.
set -u
G="python benchmarks/gateway.py --runs 3 --retry-loaded 1 --wait-quiet 5"
step() { name=$1; shift; $G "$@" --out "benchmarks/out/gw-$name.json" > "benchmarks/out/gw-$name.log" 2>&1; }
# Latency at 1, 100 and 1000 concurrent streams, paced upstream (20 tokens/s, 50 tokens).
# The gateway's upstream pool is raised to 1024 so that 1000 streams each get a connection
# (nginx and LiteLLM do not cap busy upstream connections).
step latency --parts latency --concurrency 1,100,1000 --repeat 1:6,100:3,1000:1 \
     --upstream-pool-size 1024
# 100 streams again, five rounds, without LiteLLM (whose 35 s runs dominate the time).
step latency-100b --parts latency --fronts direct,streamcore,nginx --concurrency 100 \
     --repeat 100:3 --upstream-pool-size 1024 --runs 5
# CPU per relayed token: unpaced upstream, 64 connections of 1000-token streams, 5 s runs.
step cpu --parts cpu --upstream-pool-size 1024
# Where the gateway's CPU per relayed token goes (py-spy, see profile-gateway.sh).
bash benchmarks/profile-gateway.sh > benchmarks/out/gw-profile.log 2>&1
echo done > benchmarks/out/gw.done
