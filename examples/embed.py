"""Embedding streamcore in your own service: one async-generator handler, streamed as SSE.

Run it::

    python examples/embed.py --port 8001

and stream from it::

    curl -N -X POST localhost:8001/v1/generate -d '{"prompt": "hello streaming world"}'
    curl localhost:8001/hello

The server runs inside this program's own event loop (``streamcore.start`` returns a
``Server``; ``await server.close(timeout)`` stops it): no globals, no thread of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import uvloop

import streamcore
from streamcore import App, Request, RequestError

app = App()


@app.stream("POST", "/v1/generate")  # an async generator handler becomes an SSE stream
async def generate(request: Request) -> AsyncIterator[str]:
    """One event per word of the prompt, 50 ms apart."""
    body = request.json()
    prompt = body.get("prompt", "") if isinstance(body, dict) else ""
    try:
        for word in str(prompt).split():
            yield word + " "
            await asyncio.sleep(0.05)
    finally:
        # Runs when the stream ends, or when its client is gone for good: by default after
        # the linger window (Limits.resume_grace_s, 5 s) in which a reconnect with
        # Last-Event-ID finds it alive; at once with the X-Disconnect-Policy: cancel header.
        print("generation closed", flush=True)


@app.route("GET", "/hello")  # a plain handler returns JSON, bytes or str
async def hello(request: Request) -> dict[str, str]:
    name = parse_qs(request.query).get("name", ["world"])[0]
    if len(name) > 100:
        raise RequestError("name too long", param="name")
    return {"hello": name}


async def main(host: str, port: int) -> None:
    server = await streamcore.start(app, host, port)
    print(f"embed example ready on http://{host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close(5.0)  # let in-flight streams finish, up to 5 s


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0: any free port")
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
