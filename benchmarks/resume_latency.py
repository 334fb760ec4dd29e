"""Resume latency from memory on both transports (issue 10): reconnect to the first missed
event, from the log and by a snapshot.

    python benchmarks/resume_latency.py --runs 3 --resumes 200 --out benchmarks/out/resume.json

``streamcore serve`` (memory store, default policy: linger 5 s, paced at 50 tokens/s) is
pinned to core 0, this client to core 1.  Each resume: a client starts a stream with a
POST, reads 5 events, drops the connection (RST), 0.2 s later (~10 events missed, in the
log) reconnects and times from its new connection's connect() to the first missed event:

- ``sse``: ``GET /v1/streams/{id}`` with ``Last-Event-ID``, to the first ``id:`` line;
- ``ws``: a WebSocket handshake on ``/v1/ws`` and ``{"type": "resume"}``, to the first
  ``chunk`` message (the stream was started over SSE: the resume crosses transports);
- ``sse_snapshot`` / ``ws_snapshot``: the same with a cursor of another epoch, to the
  ``snapshot`` event / message (the text so far built from the log and the folded text).

``--resumes`` in a row per set-up, the set-ups in turn, ``--runs`` rounds: p50 and p99
of each round, the median of the rounds'; the server's CPU time (its /proc stat) per
resume.  The machine is shared (other helpers' runs): read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import procstat  # noqa: E402

PY = sys.executable
SERVER_CPU, CLIENT_CPU = "0", 1
BODY = json.dumps({"model": "synthetic", "stream": True, "max_tokens": 40, "messages": [
    {"role": "user", "content": "Write a short story about a token stream that flows "
     "through a bounded pipe to a client far away over a network"}]}).encode()
#: Away this long: ~10 events at 50 tokens/s are missed and in the log when it comes back.
MISSED_S = 0.2
WS_HANDSHAKE = (b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [PY, "-m", "streamcore", "serve", "--port", str(port), "--token-rate", "50",
           "--log-level", "warning"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", SERVER_CPU, *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_ids(reader: asyncio.StreamReader, want: int,
                   snapshot: bool = False) -> list[bytes]:
    ids: list[bytes] = []
    named = False
    while len(ids) < want:
        line = await reader.readline()
        if not line:
            raise RuntimeError("stream closed early")
        if line.startswith(b"event: snapshot"):
            named = True
        if line.startswith(b"id: ") and (named or not snapshot):
            ids.append(line[4:].strip())
    return ids


async def ws_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    doc: dict[str, Any] = json.loads(await reader.readexactly(size))
    return doc


def ws_frame(payload: bytes) -> bytes:
    """A masked text frame with the zero mask (RFC 6455 5.3: the payload as it is)."""
    n = len(payload)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else b"\xfe" + struct.pack("!H", n))
    return head + b"\0\0\0\0" + payload


async def one_resume(port: int, how: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    last = (await read_ids(reader, 5))[-1].decode()
    abort(writer)
    stream_id, epoch, seq = last.split("-")
    snapshot = how.endswith("snapshot")
    if snapshot:
        epoch = "0" if epoch != "0" else "1"  # another history: a snapshot of this one
    await asyncio.sleep(MISSED_S)
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if how.startswith("sse"):
        writer.write(f"GET /v1/streams/{stream_id} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: "
                     f"{stream_id}-{epoch}-{seq}\r\n\r\n".encode())
        first = (await read_ids(reader, 1, snapshot))[0]
        took = time.perf_counter() - t0
        got = int(first.rsplit(b"-", 1)[1])
    else:
        writer.write(WS_HANDSHAKE)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ws_frame(json.dumps({"type": "resume", "id": "r", "stream": stream_id,
                                          "after": int(seq), "epoch": epoch}).encode()))
        while True:
            message = await ws_message(reader)
            if message["type"] in ("chunk", "snapshot"):
                break
        took = time.perf_counter() - t0
        got = message["seq"]
    abort(writer)
    if (snapshot and got <= int(seq)) or (not snapshot and got != int(seq) + 1):
        raise RuntimeError(f"{how}: resumed at {got} after {last}")
    return took


def round_(port: int, pid: int, how: str, n: int) -> dict[str, Any]:
    async def main() -> list[float]:
        return [await one_resume(port, how) for _ in range(n)]

    cpu0 = procstat.cpu_seconds(pid)
    times = sorted(asyncio.run(main()))
    cpu = procstat.cpu_seconds(pid) - cpu0
    return {"how": how, "n": n, "p50_ms": times[n // 2] * 1e3,
            "p99_ms": times[min(n - 1, int(n * 0.99))] * 1e3, "max_ms": times[-1] * 1e3,
            # Per stream started, read, cut and resumed (the whole cycle's server CPU).
            "server_cpu_ms_per_cycle": cpu / n * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})
    proc, port = start_server()
    hows = ("sse", "ws", "sse_snapshot", "ws_snapshot")
    rounds: dict[str, list[dict[str, Any]]] = {how: [] for how in hows}
    results: dict[str, Any] = {"machine": os.uname().nodename, "nproc": os.cpu_count(),
                               "loadavg_before": os.getloadavg()}
    try:
        for _ in range(args.runs):
            for how in hows:
                r = round_(port, proc.pid, how, args.resumes)
                print(json.dumps(r), flush=True)
                rounds[how].append(r)
    finally:
        proc.terminate()
        proc.wait(10)
    results["resume"] = {how: {"rounds": runs,
                               "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                               "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                               "server_cpu_ms_per_cycle": statistics.median(
                                   r["server_cpu_ms_per_cycle"] for r in runs)}
                         for how, runs in rounds.items()}
    results["loadavg_after"] = os.getloadavg()
    print(json.dumps({how: {k: round(v, 3) for k, v in r.items() if k != "rounds"}
                      for how, r in results["resume"].items()}, indent=1))
    print("loadavg", results["loadavg_after"])
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
