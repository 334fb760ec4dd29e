"""Many idle SSE connections on one host with ``serve --workers N`` (issue 10): RSS per
connection.

    python benchmarks/idle_workers.py --connections 100000 --workers 8 --clients 8

A process may hold only ~20 000 descriptors here (``ulimit -Hn``), so the server runs N
workers (SO_REUSEPORT) and the load runs in ``--clients`` processes, each opening its share
of the connections from its own loopback source address (127.0.0.2, .3, ...: one address
has only ~28 000 ephemeral ports towards one server port).  Each connection POSTs a
streamed chat completion whose first token is ``--first-token-delay`` s away: the server
sends the 200 and its SSE head at once, and the stream then idles (heartbeat comments
only).  Once every connection has its head, the server tree's RSS (supervisor and workers,
from /proc) is read, held ``--hold`` s, and read again; RSS per connection is the growth
over the idle server's, divided by the connections open.  Bounded in time: every phase has
a deadline, and the run stops at the first that passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import procstat  # noqa: E402

BODY = json.dumps({"model": "synthetic", "stream": True, "max_tokens": 1, "messages": [
    {"role": "user", "content": "hold this stream open and idle for the benchmark"}]}).encode()
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: "
           b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


class Idle(asyncio.Protocol):
    def __init__(self, opened: list[int]) -> None:
        self.opened = opened
        self.seen = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        if self.seen is not None:
            self.seen += data
            if b"\r\n\r\n" in self.seen:
                if self.seen.startswith(b"HTTP/1.1 200"):
                    self.opened[0] += 1
                else:
                    self.opened[1] += 1
                self.seen = None  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--first-token-delay", type=float, default=600.0)
    parser.add_argument("--store", default="memory")
    parser.add_argument("--window", type=int, default=2000,
                        help="per client: requests sent but not yet answered before the "
                             "next batch (a ramp the server's accept keeps up with)")
    parser.add_argument("--open-timeout", type=float, default=300.0,
                        help="seconds the clients may take to open; what is open then counts")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "streamcore", "serve", "--port", str(port), "--workers",
           str(args.workers), "--store", args.store, "--log-level", "warning",
           "--first-token-delay", str(args.first_token_delay),
           "--max-connections", str(args.connections * 2), "--max-connections-per-ip", "0",
           "--heartbeat-interval-s", "60", "--stream-idle-timeout-s", "3600"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout is not None
    server.stdout.readline()  # the banner: every worker listens
    time.sleep(1.0)
    pids = procstat.tree(server.pid)
    rss0 = procstat.rss_bytes(server.pid, pids)
    t0 = time.monotonic()
    share = -(-args.connections // args.clients)
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    procs = []
    # The clients hold their connections until this file exists.
    stamp = os.path.join("/tmp", f".streamcore-idle-hold-{os.getpid()}")
    for i in range(args.clients):
        p = ctx.Process(target=_client_entry,
                        args=(i, port, share, stamp, report, args.open_timeout,
                              args.window))
        p.start()
        procs.append(p)
    try:
        results = [report.get(timeout=args.open_timeout + 180) for _ in procs]
        opened = sum(r[1] for r in results)
        open_s = time.monotonic() - t0
        time.sleep(1.0)
        pids = procstat.tree(server.pid)
        rss1 = procstat.rss_bytes(server.pid, pids)
        cpu_a = procstat.cpu_seconds(server.pid, pids)
        time.sleep(args.hold)
        rss2 = procstat.rss_bytes(server.pid, pids)
        cpu_b = procstat.cpu_seconds(server.pid, pids)
    finally:
        with open(stamp, "w"):
            pass  # the clients close now
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        os.unlink(stamp)
        server.send_signal(signal.SIGINT)  # stop now: nothing left to drain
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    out = {"requested": args.connections, "opened": opened,
           "refused": sum(r[2] for r in results), "connect_failed": sum(r[3] for r in results),
           "workers": args.workers, "clients": args.clients, "open_s": open_s,
           "rss_idle_server": rss0, "rss_open": rss1, "rss_after_hold": rss2,
           "rss_per_conn": (rss2 - rss0) / max(1, opened),
           "idle_cpu_util": (cpu_b - cpu_a) / args.hold, "hold_s": args.hold,
           "loadavg": os.getloadavg(), "store": args.store}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if opened else 1


def _client_entry(index: int, port: int, count: int, stamp: str, report: Any,
                  open_timeout: float, window: int) -> None:
    """A client that holds its connections until the ``stamp`` file exists."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    source = f"127.0.0.{index + 2}"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        opened = [0, 0]
        protos = []
        failed = 0
        batch = 500
        deadline = time.monotonic() + open_timeout
        for start in range(0, count, batch):
            if time.monotonic() > deadline:
                break  # bounded in time: what is open by now is measured
            tasks = [loop.create_connection(lambda: Idle(opened), "127.0.0.1", port,
                                            local_addr=(source, 0))
                     for _ in range(min(batch, count - start))]
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException):
                    failed += 1
                else:
                    protos.append(result[1])
            # A ramp: no more than ``window`` requests unanswered, so that a burst of SYNs
            # does not overflow the accept queues (each drop costs a client 1-3-7 s).
            while len(protos) - sum(opened) > window and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        deadline = time.monotonic() + 60
        while sum(opened) < len(protos) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        report.put((index, opened[0], opened[1], failed))
        deadline = time.monotonic() + 600
        while not os.path.exists(stamp) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for p in protos:
            if p.transport is not None:
                p.transport.abort()

    import uvloop
    uvloop.run(run())


if __name__ == "__main__":
    sys.exit(main())
