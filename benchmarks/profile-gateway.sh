#!/usr/bin/env bash
# Where the gateway's CPU per relayed token goes: py-spy on the streamcore gateway (CPU 1)
# relaying an unpaced streamcore upstream (CPU 0) to 64 connections of 1000-token streams.
#   bash benchmarks/profile-gateway.sh      -> benchmarks/out/profile-gateway.{raw,txt}
set -eu
PY=$(python -c 'import sys; print(sys.executable)')   # the real interpreter, not a pyenv shim
UP=18701; GW=18702
taskset -c 0 $PY -m streamcore serve --port $UP --token-rate 0 --max-answer-tokens 1000000 \
    --log-level warning & UPSTREAM=$!
taskset -c 1 $PY -m streamcore serve --port $GW --upstream "http://127.0.0.1:$UP/v1 models=synthetic" \
    --upstream-pool-size 1024 --log-level warning & GATEWAY=$!
trap 'kill $UPSTREAM $GATEWAY 2>/dev/null' EXIT
for port in $UP $GW; do  # ready (a loaded machine takes seconds to start them)
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.2; done
done
taskset -c 0 $PY benchmarks/loadgen.py throughput --port $GW -c 64 -t 1000 -d 14 --strict-end \
    > benchmarks/out/profile-gateway-load.json &
LOAD=$!
sleep 3
py-spy record --format raw -o benchmarks/out/profile-gateway.raw --pid $GATEWAY -d 8 -r 250 \
    --nonblocking
wait $LOAD
python benchmarks/profile_top.py benchmarks/out/profile-gateway.raw -n 30 \
    | tee benchmarks/out/profile-gateway.txt
