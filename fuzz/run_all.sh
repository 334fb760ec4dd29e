#!/usr/bin/env bash
# Run every fuzz harness for N seconds (default 60), two at a time, at low priority:
#   fuzz/run_all.sh 600          # ten minutes each
# Under atheris (coverage-guided) when it is installed, else the seeded driver.  Logs go
# to fuzz/work/logs/<target>.log; a crash leaves a crash-* file in the working directory
# and a non-zero status.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
mkdir -p fuzz/work/logs
if python -c "import atheris" 2>/dev/null; then
    args=(-max_total_time="$SECONDS_EACH" -rss_limit_mb=1024 -print_final_stats=1)
else
    args=(--seconds "$SECONDS_EACH")
fi
status=0
run() {
    nice -n 10 python "fuzz/$1.py" "${args[@]}" >"fuzz/work/logs/$1.log" 2>&1
    local rc=$?
    echo "$1: exit $rc; $(grep -E 'DONE|no invariant broken|stat::number_of_executed_units' "fuzz/work/logs/$1.log" | tail -2 | tr '\n' ' ')"
    return $rc
}
targets=(fuzz_http fuzz_ws fuzz_sse fuzz_cursor fuzz_chat fuzz_wsapi fuzz_upstream)
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    run "${targets[i]}" & a=$!
    if ((i + 1 < ${#targets[@]})); then
        run "${targets[i + 1]}" & b=$!
        wait $b || status=1
    fi
    wait $a || status=1
done
exit $status
