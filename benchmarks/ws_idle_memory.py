"""Where the bytes of an idle WebSocket go: Python heap per idle connection, by allocation
site, in process.

A real :class:`~streamcore.Server` listens on 127.0.0.1 in this process (uvloop); a client
in a child process (so that none of its objects are in our heap) opens N connections, sends
one request on each and reads until its first chunk, then holds them open: N idle streams,
as workload C of ``benchmarks/run.py`` has them.  ``tracemalloc`` snapshots taken before
and while they are held (after a warm-up batch, so that caches and code objects made once
are not counted) give the bytes per connection, by allocation site; a ``gc.get_referents``
walk of one connection gives what it owns by type (objects reachable from it and not from
another connection).  The server's RSS per connection is printed too (it also counts the
kernel-facing buffers and the allocator's slack, which tracemalloc does not see).

Apps (``--app``): ``daemon`` (the gateway's ``/v1/ws`` envelope protocol, its synthetic
model paced at one token per 20 s, as ``run.py`` starts it), ``user`` (a user's
``@app.websocket`` handler, ``benchmarks/peers/streamcore_user.py``); ``--proto sse`` the
same stream over SSE, for comparison.

    python benchmarks/ws_idle_memory.py [-n 2000] [--app daemon|user] [--proto ws|sse]
                                        [--top 25] [--group lineno|filename|traceback]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import sys
import tracemalloc
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this tree's streamcore, not an installed one
sys.path.insert(0, os.path.join(HERE, "peers"))

#: Tokens per second of the server's stream: one token, then silence (run.py's IDLE_RATE).
IDLE_RATE = 0.05
HUBS = (dict, list, set, tuple)
FIRST = b'"chunk"'  # a WebSocket chunk message (the daemon sends a "stream" message first)


# -- the client (child process) ----------------------------------------------------------


def client(port: int, n: int, proto: str) -> None:
    """Open ``n`` streams, each up to its first chunk; say "ready"; hold until stdin ends."""
    import loadgen

    socks = []
    for i in range(n):
        if proto == "ws":
            sock, buf = loadgen.ws_connect_blocking(port)
            sock.sendall(loadgen.ws_request(f"r{i}", 2))
            marker = FIRST
        else:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(loadgen.sse_request(port, 2))
            buf, marker = bytearray(), b"data:"
        while marker not in buf:
            data = sock.recv(65536)
            if not data:
                raise SystemExit(f"connection {i} closed before its first chunk")
            buf += data
        socks.append(sock)
    print("ready", flush=True)
    sys.stdin.read()
    for sock in socks:
        sock.close()


# -- the server (this process) -----------------------------------------------------------


def build(app_name: str) -> Any:
    from streamcore.limits import Limits

    limits = Limits(max_connections=200_000, max_connections_per_ip=0)
    if app_name == "user":
        import streamcore_user

        app = streamcore_user.build(IDLE_RATE)
        app.limits = limits
        return app
    from streamcore.gateway import build_app
    from streamcore.sources.synthetic import SyntheticModel

    return build_app([SyntheticModel(tokens_per_s=IDLE_RATE, default_tokens=1_000_000,
                                     max_answer_tokens=1_000_000)], limits)


async def open_batch(port: int, n: int, proto: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "--client", str(port), "-n", str(n),
        "--proto", proto, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise SystemExit("the client failed")
    return proc


async def close_batch(proc: asyncio.subprocess.Process, server: Any) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.wait()
    for _ in range(200):
        if not server.connections:
            break
        await asyncio.sleep(0.01)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def owned(conn: Any, other: Any, ctx: Any) -> Counter[str]:
    """Bytes by type of the objects reachable from ``conn`` and not from ``other`` (another
    connection of the same kind): what one connection owns.  Modules, classes, functions,
    the loop, the server's shared context (and what it holds) and registries (a container
    of more than 64 items, such as a timer wheel's buckets) are not walked into."""
    stop_types = (type, type(sys), type(owned), type(len))
    stop = {id(ctx), id(ctx.loop), *(id(o) for o in gc.get_referents(ctx))}
    if hasattr(ctx, "__slots__"):
        stop.update(id(getattr(ctx, name)) for name in ctx.__slots__ if hasattr(ctx, name))

    def reach(root: Any) -> dict[int, Any]:
        seen: dict[int, Any] = {}
        todo = [root]
        while todo:
            obj = todo.pop()
            key = id(obj)
            if key in seen or key in stop or isinstance(obj, stop_types) or (
                    isinstance(obj, HUBS) and len(obj) > 64):
                continue
            seen[key] = obj
            todo.extend(gc.get_referents(obj))
        return seen

    mine, theirs = reach(conn), reach(other)
    sizes: Counter[str] = Counter()
    for key, obj in mine.items():
        if key not in theirs:
            sizes[type(obj).__qualname__] += sys.getsizeof(obj)
    return sizes


async def measure(args: argparse.Namespace) -> None:
    import streamcore

    app = build(args.app)
    server = streamcore.Server(app, app.limits)
    await server.listen("127.0.0.1", 0)
    port = server.port
    await close_batch(await open_batch(port, min(100, args.n), args.proto), server)  # warm-up
    gc.collect()
    tracemalloc.start(args.depth)
    rss0 = rss()
    before = tracemalloc.take_snapshot()
    proc = await open_batch(port, args.n, args.proto)
    await asyncio.sleep(0.5)
    gc.collect()
    after = tracemalloc.take_snapshot()
    rss1 = rss()
    n = args.n
    conns = [c for c in server.connections]
    stats = after.compare_to(before, args.group)
    total = sum(s.size_diff for s in stats)
    print(f"{args.app} over {args.proto}, {n} idle streams ({len(conns)} connections): "
          f"Python heap {total / n:.0f} B per connection (tracemalloc), "
          f"RSS {(rss1 - rss0) / n / 1024:.2f} KiB per connection (tracemalloc's own tables "
          "included: run.py C for RSS)")
    print(f"\ntop {args.top} allocation sites ({args.group}), bytes and blocks per connection:")
    for stat in stats[:args.top]:
        where = stat.traceback.format()[-1].strip() if args.group != "traceback" else \
            " <- ".join(str(f) for f in stat.traceback)
        print(f"  {stat.size_diff / n:8.1f} B {stat.count_diff / n:6.2f}  {where}")
    tracemalloc.stop()
    if len(conns) >= 2:
        sizes = owned(conns[0], conns[1], server.ctx)
        print(f"\none connection ({type(conns[0]).__name__}) owns {sum(sizes.values())} B "
              "of objects (sys.getsizeof of what it reaches and another does not):")
        for name, size in sizes.most_common(args.top):
            print(f"  {size:6d} B  {name}")
    await close_batch(proc, server)
    await server.close(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--app", choices=("daemon", "user"), default="daemon")
    parser.add_argument("--proto", choices=("ws", "sse"), default="ws")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--group", choices=("lineno", "filename", "traceback"),
                        default="lineno")
    parser.add_argument("--depth", type=int, default=1, help="tracemalloc frames kept")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.n, args.proto)
        return
    import uvloop

    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
