#!/usr/bin/env bash
# Server CPU split into user and kernel time, for the two costs that decide workload B:
#
#   bash benchmarks/cost.sh steady SERVER [N=3000] [W=8]
#       CPU per paced token in steady state: N streams at 20 tokens/s (loadgen.py paced),
#       the server's utime/stime sampled over W seconds after the ramp (setup excluded).
#   bash benchmarks/cost.sh run SERVER [N=2000] [T=40]
#       CPU per delivered token over a whole B run: N streams of T tokens at 20 tokens/s
#       opened over 1 s, from the first request to the last byte (opening, pacing and
#       closing streams; run with two T to tell the cost per stream from the cost per token).
#   bash benchmarks/cost.sh churn SERVER [C=16] [D=10]
#       CPU per new stream: C clients each opening a connection per 1-token stream
#       (benchmarks/churn.py), D seconds.
#
# SERVER is streamcore (the working tree) or raw (peers/raw_asyncio.py; churn: streamcore
# only, the raw peer answers any request the same way).  Server on CPU 0, client on CPU 1.
# One run per call: run each a few times, alternating servers (the machine is shared).
set -u
cd "$(dirname "$0")/.."
MODE=$1; S=$2
PORT=$((10000 + RANDOM % 20000))  # below the ephemeral range
RATE=20; [ "$MODE" = churn ] && RATE=0
if [ "$S" = streamcore ]; then
  taskset -c 0 python -m streamcore serve --host 127.0.0.1 --port $PORT --token-rate $RATE \
    --first-token-delay 0 --default-tokens 1000000 --max-answer-tokens 1000000 \
    --max-connections 200000 --max-connections-per-ip 0 \
    --log-level warning &
else
  taskset -c 0 python benchmarks/peers/raw_asyncio.py --host 127.0.0.1 --port $PORT \
    --token-rate $RATE &
fi
PID=$!
trap 'kill $PID 2>/dev/null' EXIT
# Until the server accepts (a busy machine starts it in more than the 1.5 s once slept).
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2).close()" \
    2>/dev/null && break
  sleep 0.1
done
ticks() { awk '{print $14, $15}' /proc/$PID/stat; }
if [ "$MODE" = steady ]; then
  N=${3:-3000}; W=${4:-8}
  taskset -c 1 python benchmarks/loadgen.py paced --port $PORT --proto "${PROTO:-sse}" \
    -c "$N" -t $(( (W + 8) * RATE )) --rate $RATE --out /dev/null >/dev/null 2>&1 &
  LG=$!
  sleep 5
  read -r u0 s0 < <(ticks); sleep "$W"; read -r u1 s1 < <(ticks)
  wait $LG
  UNITS=$(( N * RATE * W )); WHAT="paced token (N=$N, ${PROTO:-sse})"
elif [ "$MODE" = run ]; then
  N=${3:-2000}; T=${4:-40}; OUT=$(mktemp)
  read -r u0 s0 < <(ticks)
  taskset -c 1 python benchmarks/loadgen.py paced --port $PORT --proto "${PROTO:-sse}" \
    -c "$N" -t "$T" --rate $RATE --ramp 1 --out "$OUT" >/dev/null 2>&1
  read -r u1 s1 < <(ticks)
  UNITS=$(python3 -c "import json; print(json.load(open('$OUT'))['tokens'])"); rm -f "$OUT"
  WHAT="delivered token (whole run, N=$N, T=$T, ${PROTO:-sse})"
else
  C=${3:-16}; D=${4:-10}
  read -r u0 s0 < <(ticks)
  UNITS=$(taskset -c 1 python benchmarks/churn.py $PORT "$C" "$D" 1)
  read -r u1 s1 < <(ticks)
  WHAT="new stream ($UNITS streams)"
fi
HZ=$(getconf CLK_TCK)
python3 -c "
u = ($u1 - $u0) / $HZ / $UNITS * 1e6; s = ($s1 - $s0) / $HZ / $UNITS * 1e6
print('$S: server CPU per $WHAT: user %.2f µs + kernel %.2f µs = %.2f µs' % (u, s, u + s))"
