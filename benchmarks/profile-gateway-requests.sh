#!/usr/bin/env bash
# Where the gateway's CPU per *request* goes (what time to first token waits for under
# concurrency): py-spy on the streamcore gateway (CPU 1) relaying an unpaced streamcore
# upstream (CPU 0) to 16 connections requesting 1-token streams back to back.
#   bash benchmarks/profile-gateway-requests.sh  -> benchmarks/out/profile-gateway-requests.{raw,txt}
set -eu
PY=$(python -c 'import sys; print(sys.executable)')   # the real interpreter, not a pyenv shim
UP=18711; GW=18712
taskset -c 0 $PY -m streamcore serve --port $UP --token-rate 0 --log-level warning & UPSTREAM=$!
taskset -c 1 $PY -m streamcore serve --port $GW --upstream "http://127.0.0.1:$UP/v1 models=synthetic" \
    --upstream-pool-size 1024 --log-level warning & GATEWAY=$!
trap 'kill $UPSTREAM $GATEWAY 2>/dev/null' EXIT
for port in $UP $GW; do  # ready (a loaded machine takes seconds to start them)
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.2; done
done
taskset -c 0 $PY benchmarks/loadgen.py throughput --port $GW -c 16 -t 1 -d 12 --strict-end \
    > benchmarks/out/profile-gateway-requests-load.json &
LOAD=$!
sleep 2
py-spy record --format raw -o benchmarks/out/profile-gateway-requests.raw --pid $GATEWAY -d 8 \
    -r 250 --nonblocking
wait $LOAD
CPU=$(awk '{print $14+$15}' /proc/$GATEWAY/stat)
python - "$CPU" <<'PY'
import json, os, sys
d = json.load(open("benchmarks/out/profile-gateway-requests-load.json"))
ticks = int(sys.argv[1]) / os.sysconf("SC_CLK_TCK")
print(f"{d['streams_done']} streams ({d['streams_valid']} valid) in {d['wall_s']:.1f} s; "
      f"gateway CPU {ticks:.2f} s in all (warm-up included): "
      f"{ticks / max(1, d['streams_done']) * 1e6:.0f} us per request")
PY
python benchmarks/profile_top.py benchmarks/out/profile-gateway-requests.raw -n 40 \
    | tee benchmarks/out/profile-gateway-requests.txt
