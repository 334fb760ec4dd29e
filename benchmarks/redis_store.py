"""The Redis Streams store against the memory store (issue 10): per-token server CPU, and
resume latency (reconnect to the first missed event).

    python benchmarks/redis_store.py --runs 3 --out benchmarks/out/redis-store.json

Per-token CPU: ``streamcore serve`` pinned to core 0 with ``--store memory`` and then
``--store redis://``, alternating, ``--runs`` times each; ``loadgen.py`` pinned to core 1
(workload A: 64 connections of unpaced 1000-token streams for ``--duration`` s; workload
B: 64 streams paced at ``--rate`` tokens/s); redis-server (our own, no persistence) pinned
to core 1 with the load.  The server's CPU time (its /proc stat) over the tokens the
client got; Redis' CPU reported beside it.  Medians of the runs, and their ratio.

Resume latency: a client starts a paced stream (50 tokens/s) on node A, reads 5 events,
drops the connection, 0.2 s later (10 events missed) sends ``GET /v1/streams/{id}`` with
``Last-Event-ID`` to node B (Redis: another process, pinned to core 1) or to A itself
(memory: the only place it can be resumed); the latency is from the new connection's
connect() to the first missed event's ``id:`` line, ``--resumes`` times in a row per
round, the three set-ups in turn, ``--runs`` rounds: p50 and p99 of each round, and the
median of the rounds'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import procstat  # noqa: E402

PY = sys.executable
SERVER_CPU, LOAD_CPU = "0", "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") else cmd


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(pinned([shutil.which("redis-server") or "redis-server", "--port",
                                    str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no"], LOAD_CPU),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_server(store: str, *extra: str, cpu: str = SERVER_CPU,
                 ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = pinned([PY, "-m", "streamcore", "serve", "--port", str(port), "--store", store,
                  "--log-level", "warning", *extra], cpu)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.3)  # connected to Redis, loop settled
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(mode: str, port: int, **opts: Any) -> dict[str, Any]:
    cmd = [PY, os.path.join(HERE, "loadgen.py"), mode, "--port", str(port)]
    for key, value in opts.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(pinned(cmd, LOAD_CPU), capture_output=True, text=True, check=True)
    text = out.stdout
    return dict(json.loads(text[text.find("{"):text.rindex("}") + 1]))


def cpu_run(store: str, redis_pid: int, workload: str, args: argparse.Namespace,
            ) -> dict[str, Any]:
    extra = ["--token-rate", "0"] if workload == "A" else ["--token-rate", str(args.rate)]
    proc, port = start_server(store, *extra)
    try:
        cpu0 = procstat.cpu_seconds(proc.pid)
        redis0 = procstat.cpu_seconds(redis_pid)
        t0 = time.monotonic()
        if workload == "A":
            got = load("throughput", port, concurrency=64, tokens=1000,
                       duration=args.duration)
        else:
            got = load("paced", port, concurrency=64, tokens=int(args.rate * args.duration),
                       rate=args.rate, ramp=1.0)
        wall = time.monotonic() - t0
        cpu = procstat.cpu_seconds(proc.pid) - cpu0
        redis_cpu = procstat.cpu_seconds(redis_pid) - redis0
    finally:
        stop(proc)
    tokens = got.get("tokens") or got.get("chunks") or 0
    return {"store": "redis" if store.startswith("redis") else "memory", "workload": workload,
            "tokens": tokens, "wall_s": wall, "server_cpu_s": cpu, "redis_cpu_s": redis_cpu,
            "us_per_token": cpu / tokens * 1e6 if tokens else None,
            "redis_us_per_token": redis_cpu / tokens * 1e6 if tokens else None,
            "errors": got.get("errors")}


# -- resume latency ------------------------------------------------------------------------

BODY = json.dumps({"model": "synthetic", "stream": True, "max_tokens": 40, "messages": [
    {"role": "user", "content": "Write a short story about a token stream that flows "
     "through a bounded pipe to a client far away over a network"}]}).encode()


#: How long the client is away: ~10 events at 50 tokens/s are missed, so the first missed
#: event is in the log (or in Redis) when it comes back, and the latency is the resume's,
#: not the next token's.
MISSED_S = 0.2


async def _read_ids(reader: asyncio.StreamReader, want: int) -> list[bytes]:
    ids: list[bytes] = []
    while len(ids) < want:
        line = await reader.readline()
        if not line:
            raise RuntimeError("stream closed early")
        if line.startswith(b"id: "):
            ids.append(line[4:].strip())
    return ids


async def one_resume(origin: int, target: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", origin)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    ids = await _read_ids(reader, 5)
    writer.transport.abort()
    last = ids[-1].decode()
    stream_id = last.split("-")[0]
    await asyncio.sleep(MISSED_S)  # events are missed: the resume replays them
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", target)
    writer.write(f"GET /v1/streams/{stream_id} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: "
                 f"{last}\r\n\r\n".encode())
    first = (await _read_ids(reader, 1))[0]
    took = time.perf_counter() - t0
    writer.transport.abort()
    if int(first.rsplit(b"-", 1)[1]) != int(last.rsplit("-", 1)[1]) + 1:
        raise RuntimeError(f"resumed at {first!r} after {last!r}")
    return took


def resume_latency(origin: int, target: int, n: int) -> dict[str, Any]:
    async def main() -> list[float]:
        return [await one_resume(origin, target) for _ in range(n)]

    times = sorted(asyncio.run(main()))
    return {"n": n, "p50_ms": times[n // 2] * 1e3,
            "p99_ms": times[min(n - 1, int(n * 0.99))] * 1e3, "max_ms": times[-1] * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0, help="B: tokens/s per stream")
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--workloads", default="A,B")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    redis, redis_port = start_redis()
    url = f"redis://127.0.0.1:{redis_port}/0"
    results: dict[str, Any] = {"cpu": [], "resume": {}, "machine": os.uname().nodename,
                               "nproc": os.cpu_count(),
                               "loadavg_before": os.getloadavg()}
    try:
        workloads = [w for w in args.workloads.split(",") if w]
        for workload in workloads:
            for _ in range(args.runs):
                for store in ("memory", url):
                    r = cpu_run(store, redis.pid, workload, args)
                    print(json.dumps(r), flush=True)
                    results["cpu"].append(r)
        summary = {}
        for workload in workloads:
            med = {}
            for store in ("memory", "redis"):
                rows = [r for r in results["cpu"]
                        if r["store"] == store and r["workload"] == workload]
                med[store] = statistics.median(r["us_per_token"] for r in rows)
                med[store + "_redis_server"] = statistics.median(
                    r["redis_us_per_token"] for r in rows)
            med["ratio"] = med["redis"] / med["memory"]
            summary[workload] = med
        results["cpu_summary"] = summary
        # Resume latency: Redis (another process) and memory (the same process).
        a, a_port = start_server(url, "--token-rate", "50", "--resume-grace-s", "5")
        # Node B on the other core: two servers on one core wait for each other's turn.
        b, b_port = start_server(url, "--token-rate", "50", "--resume-grace-s", "5",
                                 cpu=LOAD_CPU)
        m, m_port = start_server("memory", "--token-rate", "50", "--resume-grace-s", "5")
        try:
            setups = {"redis_other_node": (a_port, b_port),
                      "redis_same_node": (a_port, a_port),
                      "memory_same_node": (m_port, m_port)}
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
            for _ in range(args.runs):
                for name, (origin, target) in setups.items():
                    rounds[name].append(resume_latency(origin, target, args.resumes))
            for name, runs in rounds.items():
                results["resume"][name] = {
                    "rounds": runs,
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs)}
        finally:
            for proc in (a, b, m):
                stop(proc)
    finally:
        redis.kill()
        redis.wait()
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps({"cpu_summary": results["cpu_summary"],
                      "resume": {k: {"p50_ms": v["p50_ms"], "p99_ms": v["p99_ms"]}
                                 for k, v in results["resume"].items()},
                      "loadavg": results["loadavg_after"]}, indent=1))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
