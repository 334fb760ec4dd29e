"""Function calls per relayed request in the streamcore gateway (cProfile), this tree and
optionally a baseline commit's, side by side.

Call counts do not depend on how busy the machine is, so they are the before/after evidence
for per-request work that a loaded machine's timings cannot resolve.  An unpaced streamcore
upstream (CPU 0) serves 1-token streams; the gateway (CPU 1) runs under a profiler that is
switched on (SIGUSR1) for one load run of ``--duration`` s (``loadgen.py throughput``,
``-c`` connections, back to back) after a warm-up, and off (SIGUSR2, which writes the
profile).  Printed: calls per request in all, the event loop's timer calls (``call_later``,
``call_at``, ``TimerHandle.cancel``) per request, and the functions called most per request.

``--paced``: the same per relayed *paced token* of the steady state instead.  The upstream
paces (``--rate`` tokens/s); ``-c`` streams of ``--tokens`` tokens start within 0.5 s, and the
profiler is on from 1.5 s to 1 s before the streams' end, a window in which every stream
relays ``rate`` tokens a second (the count divides by that; the requests' own set-up and end
fall outside it).  Keep ``-c`` low enough that the profiled gateway is not saturated (its
tokens would then fall behind the window): 200 is.

    python benchmarks/gateway_calls.py [--baseline-ref REF] [-c 16] [--duration 4]
    python benchmarks/gateway_calls.py --paced [-c 200] [--tokens 200] [--rate 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable


def child(out: str, argv: list[str]) -> None:
    """In the gateway's process: the server, with the profiler switched by signals."""
    import cProfile
    import runpy

    profiler = cProfile.Profile()

    def on(*_: Any) -> None:
        profiler.enable()

    def off(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    import uvloop

    class Counting(uvloop.Loop):  # type: ignore[misc]
        """uvloop's timer methods are not seen by cProfile (Cython): counted here."""

        def call_later(self, *a: Any, **kw: Any) -> Any:
            return super().call_later(*a, **kw)

        def call_at(self, *a: Any, **kw: Any) -> Any:
            return super().call_at(*a, **kw)

    run = uvloop.run
    uvloop.run = lambda main, **kw: run(main, loop_factory=Counting, **kw)
    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.argv = ["streamcore", *argv]
    runpy.run_module("streamcore", run_name="__main__")


def ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        time.sleep(0.2)
    raise RuntimeError(f"no server on port {port}")


def load(port: int, conc: int, duration: float) -> dict[str, Any]:
    import json

    out = subprocess.run(
        ["taskset", "-c", "0", PY, os.path.join(HERE, "loadgen.py"), "throughput", "--port",
         str(port), "-c", str(conc), "-t", "1", "-d", str(duration), "--strict-end"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def paced(port: int, args: argparse.Namespace, proc: subprocess.Popen[bytes]) -> int:
    """The paced load, the profiler on for the steady window; the tokens in that window."""
    import json

    load = subprocess.Popen(
        ["taskset", "-c", "0", PY, os.path.join(HERE, "loadgen.py"), "paced", "--port",
         str(port), "-c", str(args.c), "-t", str(args.tokens), "--rate", str(args.rate),
         "--ramp", "0.5", "--strict-end"], stdout=subprocess.PIPE)
    time.sleep(1.5)
    proc.send_signal(signal.SIGUSR1)
    window = args.tokens / args.rate - 1.0 - 1.5
    time.sleep(window)
    proc.send_signal(signal.SIGUSR2)
    out, _ = load.communicate()
    got = json.loads(out)
    if got["streams_valid"] != args.c:
        raise RuntimeError(f"only {got['streams_valid']} of {args.c} streams were valid")
    return round(args.c * args.rate * window)


def measure(name: str, tree: str, upstream: int, port: int, args: argparse.Namespace) -> None:
    prof = tempfile.mktemp(suffix=".prof")
    env = dict(os.environ, PYTHONPATH=tree)
    spec = f"http://127.0.0.1:{upstream}/v1 models=synthetic"
    proc = subprocess.Popen(
        ["taskset", "-c", "1", PY, os.path.abspath(__file__), "--child", prof, "--", "serve",
         "--port", str(port), "--upstream", spec, "--upstream-pool-size", "1024",
         "--max-connections-per-ip", "0",
         "--log-level", "warning"], cwd=tree, env=env, stdout=subprocess.DEVNULL)
    try:
        ready(port)
        load(port, args.c, 1.0)  # warm-up: pools, allocators
        if args.paced:
            n = paced(port, args, proc)
        else:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            got = load(port, args.c, args.duration)
            proc.send_signal(signal.SIGUSR2)
            n = got["streams_done"]
        for _ in range(100):
            if os.path.exists(prof) and os.path.getsize(prof):
                break
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(10)
    stats = pstats.Stats(prof)
    if args.keep:  # for pstats: python -c "import pstats; pstats.Stats(F).sort_stats(...)..."
        kept = os.path.join(HERE, "out", f"gateway-calls-{name.split()[-1]}.prof")
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        shutil.move(prof, kept)
    else:
        os.unlink(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[1] for v in raw.values())
    timers = {"call_later": 0, "call_at": 0}
    rows = []
    for (file, line, func), (_, ncalls, *_rest) in raw.items():
        if file == os.path.abspath(__file__) and func in timers:
            timers[func] += ncalls
            total -= ncalls  # the counting wrappers are not the server's
        short = os.path.relpath(file, tree) if file.startswith(tree) else os.path.basename(file)
        where = func if file == "~" else f"{short}:{line}({func})"
        rows.append((ncalls / max(1, n), where))
    rows.sort(reverse=True)
    unit = "paced token" if args.paced else "request"
    print(f"{name}: {n} {unit}s, {total / max(1, n):.2f} calls per {unit}; timers per {unit}: "
          + ", ".join(f"{k} {v / max(1, n):.2f}" for k, v in timers.items()), flush=True)
    for per, where in rows[:args.top]:
        print(f"    {per:7.2f}  {where}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", default="")
    parser.add_argument("-c", type=int, default=16, help="connections")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--paced", action="store_true",
                        help="calls per relayed paced token (steady state), not per request")
    parser.add_argument("--tokens", type=int, default=200, help="--paced: tokens per stream")
    parser.add_argument("--rate", type=float, default=20.0, help="--paced: tokens/s")
    parser.add_argument("--port", type=int, default=18731)
    parser.add_argument("--keep", action="store_true",
                        help="keep the profiles (benchmarks/out/gateway-calls-*.prof)")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from run import snapshot

    upstream = subprocess.Popen(
        ["taskset", "-c", "0", PY, "-m", "streamcore", "serve", "--port", str(args.port),
         "--token-rate", str(args.rate if args.paced else 0), "--max-answer-tokens",
         "1000000", "--log-level", "warning", "--max-connections-per-ip", "0"], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL)
    base = ""
    try:
        ready(args.port)
        measure("this tree", ROOT, args.port, args.port + 1, args)
        if args.baseline_ref:
            base, commit = snapshot(args.baseline_ref)
            measure(f"baseline {commit}", base, args.port, args.port + 2, args)
    finally:
        upstream.terminate()
        upstream.wait(10)
        if base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
