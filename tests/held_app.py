"""A server whose stream handlers yield every item type a handler may yield, for
``tests/test_held_memory.py``: run as ``python tests/held_app.py PORT LOG_BYTES HIGH_WATER``.

``GET /stall/{kind}`` streams items of ``kind`` until the client stops reading;
``GET /done/{kind}`` streams ``n`` of them and ends (its log is then retained for resume);
``GET /state`` says how many streams are paused and what the retained logs hold, with the
process's RSS.  Each item is a different ~60-byte OpenAI-like chunk, made the way a user's
handler makes it (``orjson.dumps``: a buffer with slack in every orjson version).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

import streamcore
from streamcore.aio.stream import Stream

PREFIX = b'{"choices":[{"index":0,"delta":{"content":'
SUFFIX = b'}}]}'


def chunk(i: int) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": f" token {i}"}}]}


KINDS: dict[str, Callable[[int], Any]] = {
    "str": lambda i: orjson.dumps(chunk(i)).decode(),
    "bytes": lambda i: orjson.dumps(chunk(i)),
    "bytearray": lambda i: bytearray(orjson.dumps(chunk(i))),
    "memoryview": lambda i: memoryview(orjson.dumps(chunk(i))),
    "dict": chunk,
    "list": lambda i: [chunk(i)],
    "tuple": lambda i: (PREFIX, orjson.dumps(f" token {i}"), SUFFIX),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def build(log_bytes: int, high_water: int) -> streamcore.App:
    limits = streamcore.Limits(stream_log_bytes=log_bytes, write_high_water_bytes=high_water,
                               write_low_water_bytes=high_water // 4,
                               write_stall_timeout_s=600.0, heartbeat_interval_s=600.0,
                               resume_retention_s=600.0, resume_budget_bytes=1 << 30,
                               max_connections_per_ip=0)
    app = streamcore.App(limits=limits)

    @app.stream("GET", "/stall/{kind}")
    async def stall(request: streamcore.Request) -> AsyncIterator[Any]:
        make = KINDS[request.path_params["kind"]]
        i = 0
        while True:
            yield make(i)
            i += 1

    @app.stream("GET", "/done/{kind}")
    async def done(request: streamcore.Request) -> AsyncIterator[Any]:
        make = KINDS[request.path_params["kind"]]
        for i in range(int(request.query.split("=")[1])):
            yield make(i)

    @app.route("GET", "/state")
    async def state(request: streamcore.Request) -> dict[str, int]:
        store = request.store
        assert isinstance(store, streamcore.MemoryStore)
        paused = sum(1 for e in store.live()
                     if isinstance(e.owner, Stream) and e.owner.state.name == "PAUSED")
        return {"paused": paused, "live": len(store.live()), "rss": rss_bytes(),
                "retained_bytes": store.retained_bytes}

    return app


if __name__ == "__main__":
    port, log_bytes, high = (int(a) for a in sys.argv[1:4])
    app = build(log_bytes, high)
    streamcore.run(app, port=port, limits=app.limits)
