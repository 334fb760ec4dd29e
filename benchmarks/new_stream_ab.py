"""new_stream.py's measure for several streamcore trees in ONE process, interleaved: on a
busy shared machine two separate runs see different loads (figures swing 1.5x), while
blocks of a few thousand streams that alternate between trees see the same.  Each tree is
imported under a package name of its own (streamcore's imports are all relative), the
same harness drives each (new_stream.py's transport and requests), and every round runs
each tree once, in rotated order; the collector runs between blocks, not inside them.
Prints each tree's median Python CPU per new stream and its per-round ratio to the first.

    git archive <commit> streamcore | tar -x -C DIR      # a tree to compare
    python benchmarks/new_stream_ab.py DIR_BEFORE DIR_AFTER [--user] [--rounds 12] [-n 2000]

``--tokens N``: the daemon's answers N tokens long (default 1): with 1001, the per-token
hot path dominates (the check that a new stream's cut did not slow it down).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import statistics
import sys
import time
from types import ModuleType
from typing import Any

import new_stream as ns  # the harness (its directory is on sys.path when run as a script)
import orjson
import uvloop


def load(name: str, root: str) -> ModuleType:
    """``root``/streamcore imported as the package ``name``."""
    spec = importlib.util.spec_from_file_location(
        name, f"{root}/streamcore/__init__.py", submodule_search_locations=[f"{root}/streamcore"])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def setup(pkg: ModuleType, user: bool, tokens: int = 1) -> tuple[Any, Any, bytes]:
    """(server, HTTPConnection class, request) of one tree, as new_stream.py makes them."""
    name = pkg.__name__
    conn_class = importlib.import_module(name + ".aio.connection").HTTPConnection
    if user:
        app = pkg.App()

        @app.stream("GET", "/stream")  # type: ignore[misc]
        async def stream(request: Any) -> Any:
            yield orjson.dumps({"choices": [{"delta": {"content": "hello"}}]})

        request = ns.USER_REQUEST
    else:
        gateway = importlib.import_module(name + ".gateway")
        synthetic = importlib.import_module(name + ".sources.synthetic")
        app = gateway.build_app([synthetic.SyntheticModel(tokens_per_s=0)])
        request = ns.chat_request(tokens)
    return pkg.Server(app, app.limits), conn_class, request


async def one_stream(server: Any, conn_class: Any, loop: asyncio.AbstractEventLoop,
                     request: bytes) -> None:
    done: asyncio.Future[None] = loop.create_future()
    transport = ns.Transport(done)
    conn = conn_class(server.ctx)
    transport.protocol = conn
    conn.connection_made(transport)
    conn.data_received(request)
    await done
    conn.connection_lost(None)


async def compare(roots: list[str], user: bool, rounds: int, n: int,
                  tokens: int = 1) -> list[list[float]]:
    loop = asyncio.get_running_loop()
    trees = [setup(load(f"streamcore_tree{i}", root), user, tokens)
             for i, root in enumerate(roots)]
    for server, conn_class, request in trees:  # warm up
        for _ in range(300):
            await one_stream(server, conn_class, loop, request)
    figures: list[list[float]] = [[] for _ in trees]
    for r in range(rounds):
        for k in range(len(trees)):
            i = (k + r) % len(trees)
            server, conn_class, request = trees[i]
            gc.collect()
            start = time.process_time()
            for _ in range(n):
                await one_stream(server, conn_class, loop, request)
            figures[i].append((time.process_time() - start) / n * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="directories holding a streamcore/ tree")
    parser.add_argument("--user", action="store_true", help="a user's @app.stream handler")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("-n", type=int, default=2000, help="streams per tree per round")
    parser.add_argument("--tokens", type=int, default=1, help="tokens per daemon answer")
    args = parser.parse_args()
    figures = uvloop.run(compare(args.trees, args.user, args.rounds, args.n, args.tokens))
    first = figures[0]
    what = "user handler" if args.user else f"daemon (synthetic, {args.tokens} tokens)"
    print(f"{what}: Python CPU per new "
          f"stream, {args.rounds} rounds x {args.n} streams, interleaved in one process")
    for root, runs in zip(args.trees, figures, strict=True):
        ratios = [a / b for a, b in zip(runs, first, strict=True)]
        print(f"  {root}: median {statistics.median(runs):.1f} us; per round / first tree: "
              f"median {statistics.median(ratios):.3f} "
              f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-"
              f"{statistics.quantiles(ratios, n=4)[2]:.3f})")


if __name__ == "__main__":
    main()
