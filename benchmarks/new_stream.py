"""Python CPU per new stream, in process: what streamcore's own code costs for one
connection's whole life (connection made, request parsed, routed, stream started, first
token written, end written, connection lost), without the kernel or the event loop's C
code that a socket benchmark (``cost.sh churn``) also counts.

A real :class:`~streamcore.aio.connection.HTTPConnection` is driven on a real uvloop
loop through a minimal transport that keeps nothing; the app is the daemon's
(``gateway.build_app``: the synthetic model, unpaced) or a user's ``@app.stream``
generator (``--user``).  Prints user CPU per stream (``time.process_time``), median of
``--runs`` runs; ``--profile`` prints a cProfile of one run instead; ``--calls`` the
function calls per stream that cProfile counts (Python functions and the builtins called
from Python; the warm-up not counted), which do not depend on the machine's load, by
module.

    python benchmarks/new_stream.py [-n 20000] [--runs 3] [--user] [--profile | --calls]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvloop

import streamcore
from streamcore.aio.connection import HTTPConnection
from streamcore.gateway import build_app
from streamcore.sources.synthetic import SyntheticModel

LAST_CHUNK = b"0\r\n\r\n"


def chat_request(tokens: int = 1) -> bytes:
    body = (b'{"model":"synthetic","messages":[{"role":"user","content":"hello there"}],'
            b'"stream":true,"max_tokens":%d}' % tokens)
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(body), body))


USER_REQUEST = b"GET /stream HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n"


class Transport(asyncio.Transport):
    """Keeps only the last bytes written: enough to see the response's end."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        super().__init__()
        self.done = done
        self.closing = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        if bytes(data[-5:]) == LAST_CHUNK and not self.done.done():
            self.done.set_result(None)

    def writelines(self, chunks: Any) -> None:
        self.write(chunks[-1])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def user_app() -> streamcore.App:
    app = streamcore.App()

    @app.stream("GET", "/stream")
    async def stream(request: streamcore.Request) -> AsyncIterator[bytes]:
        yield orjson.dumps({"choices": [{"delta": {"content": "hello"}}]})

    return app


async def one_run(app: streamcore.App, request: bytes, n: int,
                  profiler: cProfile.Profile | None = None) -> float:
    server = streamcore.Server(app, app.limits)
    loop = asyncio.get_running_loop()
    for _ in range(200):  # warm up
        await one_stream(server, loop, request)
    if profiler is not None:
        profiler.enable()
    start = time.process_time()
    for _ in range(n):
        await one_stream(server, loop, request)
    spent = (time.process_time() - start) / n
    if profiler is not None:
        profiler.disable()
    return spent


def print_calls(profiler: cProfile.Profile, n: int, unit: str = "stream") -> None:
    """Calls per ``unit`` (a stream), in all and by the file of the function called
    (builtins apart)."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_file: collections.Counter[str] = collections.Counter()
    for (path, _, _), (_, calls, _, _, _) in stats.items():
        parts = path.split(os.sep)
        where = ("/".join(parts[parts.index("streamcore"):]) if "streamcore" in parts
                 else "(builtins)" if path == "~" else os.path.basename(path))
        by_file[where] += calls
    print(f"function calls per {unit}: {sum(by_file.values()) / n:.1f}")
    for where, calls in by_file.most_common():
        print(f"  {calls / n:6.1f}  {where}")


async def one_stream(server: streamcore.Server, loop: asyncio.AbstractEventLoop,
                     request: bytes) -> None:
    done: asyncio.Future[None] = loop.create_future()
    transport = Transport(done)
    conn = HTTPConnection(server.ctx)
    transport.protocol = conn
    conn.connection_made(transport)
    conn.data_received(request)
    await done
    conn.connection_lost(None)  # the client closes once it has the end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--user", action="store_true", help="a user's @app.stream handler")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--calls", action="store_true", help="function calls per stream")
    parser.add_argument("--sort", default="tottime", help="cProfile order (--profile)")
    args = parser.parse_args()
    if args.user:
        app, request = user_app(), USER_REQUEST
    else:
        app = build_app([SyntheticModel(tokens_per_s=0)])
        request = chat_request()
    what = "user handler" if args.user else "daemon (synthetic)"
    if args.calls:
        profiler = cProfile.Profile(time.process_time)
        uvloop.run(one_run(app, request, args.n, profiler))
        print(f"{what}:", end=" ")
        print_calls(profiler, args.n)
        return
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        uvloop.run(one_run(app, request, args.n))
        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(45)
        return
    figures = [uvloop.run(one_run(app, request, args.n)) * 1e6 for _ in range(args.runs)]
    print(f"{what}: Python CPU per new stream {statistics.median(figures):.1f} us "
          f"(runs: {', '.join(f'{f:.1f}' for f in figures)})")


if __name__ == "__main__":
    main()
