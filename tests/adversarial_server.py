"""The server the adversarial suite attacks: a small App in its own process (so that its
RSS and its event loop are its own), with the limits given as JSON in argv[1].  It prints
its port once listening.  Routes:

* ``GET /tick?n=&ms=``: n events, one every ms milliseconds (the well-behaved stream);
* ``GET /healthz``, ``POST /echo`` (the body's length), ``GET /big`` (500 KB);
* ``GET /silent``: a stream handler that never yields (the idle limit ends it);
* ``GET /inject?kind=tuple|bytes|str``: one item carrying ``\\nid: x\\nevent: y``;
* ``/ws``: a WebSocket echo.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import streamcore
from streamcore import App, Limits

BIG = b"x" * 500_000
INJECTED = "first\nid: x\nevent: y\ndata: z"


def build(limits: Limits) -> App:
    app = App(limits=limits)

    @app.route("GET", "/healthz")
    async def healthz(request: Any) -> dict[str, str]:
        return {"status": "ok"}

    @app.route("POST", "/echo")
    async def echo(request: Any) -> dict[str, int]:
        return {"length": len(request.body)}

    @app.route("GET", "/big")
    async def big(request: Any) -> bytes:
        return BIG

    @app.stream("GET", "/tick")
    async def tick(request: Any) -> AsyncIterator[Any]:
        query = dict(part.split("=", 1) for part in request.query.split("&") if "=" in part)
        n, ms = int(query.get("n", "50")), int(query.get("ms", "20"))
        for i in range(1, n + 1):
            yield {"i": i}
            await asyncio.sleep(ms / 1000)

    @app.stream("GET", "/silent")
    async def silent(request: Any) -> AsyncIterator[Any]:
        await asyncio.sleep(3600)
        yield "never"

    @app.stream("GET", "/inject")
    async def inject(request: Any) -> AsyncIterator[Any]:
        kind = request.query.partition("=")[2]
        if kind == "tuple":
            yield (b'{"a": "', INJECTED.encode(), b'"}')
        elif kind == "bytes":
            yield INJECTED.encode()
        else:
            yield INJECTED

    @app.websocket("/ws")
    async def ws_echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return app


async def main() -> None:
    limits = Limits(**json.loads(sys.argv[1]))
    server = await streamcore.start(build(limits), "127.0.0.1", 0, limits=limits)
    print(server.port, flush=True)
    # SIGTERM ends the process normally, so that coverage's subprocess measurement (which
    # saves at exit) sees what this server ran; SIGKILL would lose it.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.close(drain_timeout=0)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
