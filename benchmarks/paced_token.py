"""Python CPU per paced token, in process: what streamcore's own code costs per token of
workload B's steady state (the synthetic model at 20 tokens/s on its timer wheel, the
token framed as one SSE event and handed to the write path), without the kernel's write
or the event loop's poll, which ``cost.sh steady`` also counts.

``-c`` real :class:`~streamcore.aio.connection.HTTPConnection` objects are driven on a
real uvloop loop through a minimal transport that keeps nothing (``new_stream.py``'s),
each asking the daemon's app for a ``-t``-token answer at ``--rate`` tokens/s; the
streams start over the first 50 ms, and user CPU (``time.process_time``) is read over
the window from 1 s to ``-t / rate - 0.5`` s, per token written in it: median of
``--runs`` runs.  ``--calls`` prints the function calls per token that cProfile counts
in that window (Python functions and the builtins called from Python), by module: they
do not depend on the machine's load.

    PYTHONPATH=. python benchmarks/paced_token.py [-c 2000] [-t 80] [--rate 20] [--runs 3] [--calls]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import time
from typing import Any

import uvloop
from new_stream import Transport, chat_request, print_calls

import streamcore
from streamcore.aio.connection import HTTPConnection
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel


class Counting(Transport):
    """Counts the writes (one per paced token: a sparse stream's event is one buffer)."""

    writes = 0

    def write(self, data: Any) -> None:
        Counting.writes += 1
        super().write(data)


async def one_run(c: int, tokens: int, rate: float,
                  profiler: cProfile.Profile | None = None) -> tuple[float, float]:
    app = build_app([SyntheticModel(tokens_per_s=rate, default_tokens=tokens,
                                    max_answer_tokens=tokens)],
                    Limits(max_connections=200_000, max_connections_per_ip=0))
    server = streamcore.Server(app, app.limits)
    loop = asyncio.get_running_loop()
    request = chat_request(tokens)
    done: list[asyncio.Future[None]] = []
    conns = []
    for i in range(c):
        future: asyncio.Future[None] = loop.create_future()
        transport = Counting(future)
        conn = HTTPConnection(server.ctx)
        transport.protocol = conn
        conn.connection_made(transport)
        conn.data_received(request)
        assert not future.done() and not transport.closing, "refused"
        done.append(future)
        conns.append(conn)
        if i % 100 == 99:
            await asyncio.sleep(0.0025)  # 2000 streams over 50 ms: spread over the wheel
    await asyncio.sleep(1.0)
    writes, cpu = Counting.writes, time.process_time()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(tokens / rate - 1.5)
    if profiler is not None:
        profiler.disable()
    writes, cpu = Counting.writes - writes, time.process_time() - cpu
    await asyncio.wait_for(asyncio.gather(*done), 10 + tokens / rate)
    for conn in conns:
        conn.connection_lost(None)
    return cpu / writes, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", type=int, default=2000, help="streams")
    parser.add_argument("-t", type=int, default=80, help="tokens per stream")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", action="store_true", help="function calls per token")
    args = parser.parse_args()
    streamcore.tune_gc()  # as the daemon does (cli.py)
    if args.calls:
        profiler = cProfile.Profile(time.process_time)
        _, writes = uvloop.run(one_run(args.c, args.t, args.rate, profiler))
        print("daemon (synthetic, paced):", end=" ")
        print_calls(profiler, int(writes), "token")
        return
    figures = [uvloop.run(one_run(args.c, args.t, args.rate))[0] * 1e6
               for _ in range(args.runs)]
    print(f"Python CPU per paced token ({args.c} streams at {args.rate:g}/s): "
          f"{statistics.median(figures):.2f} us "
          f"(runs: {', '.join(f'{f:.2f}' for f in figures)})")


if __name__ == "__main__":
    main()
